package main

// Software iSCSI, rescans through the Go initiator, and storageDeviceInfo.

import (
	"encoding/hex"
	"fmt"
	"log"
	"sort"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const swHbaDevice = "vmhba65"

// Lun is a disk LUN found by the last rescan.
type Lun struct {
	Canonical string
	NAA       string
	Ident     LunIdentity
	Portal    string
	Target    string
	LunID     uint16
	Chap      *ChapConfig
	Vmfs      *VmfsInfo
	VmfsErr   string
}

func (l *Lun) Key() string        { return "key-vim.host.ScsiDisk-" + l.Canonical }
func (l *Lun) DevicePath() string { return "/vmfs/devices/disks/" + l.Canonical }
func (l *Lun) Capacity() int64    { return int64(l.Ident.Blocks) * int64(l.Ident.BlockSize) }
func (l *Lun) DeviceID() string   { return DeviceIDFor(l.NAA, l.Ident.Product) }

// Uuid mirrors ESXi's ScsiLun.uuid shape: 02 00 lun 00 + NAA + hex(product[:6]).
func (l *Lun) Uuid() string {
	p := l.Ident.Product
	for len(p) < 6 {
		p += " "
	}
	return fmt.Sprintf("0200%02x0000%s%s", l.LunID&0xff, l.NAA, hex.EncodeToString([]byte(p[:6])))
}

// StorageSystem replaces the simulator's HostStorageSystem.
type StorageSystem struct {
	simulator.HostStorageSystem
	w *Host

	hba           *types.HostInternetScsiHba
	adapterChap   types.HostInternetScsiHbaAuthenticationProperties
	adapterSecret string
	targetChap    map[string]ChapConfig // "addr:port" or "addr:port|iqn" -> credentials
	discovered    []types.HostInternetScsiHbaStaticTarget
}

func (w *Host) setupStorage() {
	h := w.host
	old := simulator.Map.Get(*h.ConfigManager.StorageSystem).(*simulator.HostStorageSystem)
	s := &StorageSystem{HostStorageSystem: *old, w: w, targetChap: map[string]ChapConfig{}}
	s.Host = &h.HostSystem
	// copy the package-global template before changing anything
	tmpl := esx.HostStorageDeviceInfo
	info := &types.HostStorageDeviceInfo{}
	for _, a := range tmpl.HostBusAdapter {
		if b, ok := a.(*types.HostBlockHba); ok {
			c := *b
			info.HostBusAdapter = append(info.HostBusAdapter, &c)
		}
	}
	s.StorageDeviceInfo = info
	s.HBA = nil
	s.FileSystemVolumeInfo = types.HostFileSystemVolumeInfo{VolumeTypeList: []string{"VMFS", "NFS", "NFS41", "vsan", "VVOL", "VFFS", "OTHER", "PMEM"}}
	simulator.Map.Put(s)
	w.storage = s
	h.Config.StorageDevice = info
	h.Config.FileSystemVolume = &s.FileSystemVolumeInfo
	s.rebuildDeviceInfo()

	ds := simulator.Map.Get(*h.ConfigManager.DatastoreSystem).(*simulator.HostDatastoreSystem)
	d := &DatastoreSystem{HostDatastoreSystem: *ds, w: w}
	d.Host = &h.HostSystem
	d.Capabilities = types.HostDatastoreSystemCapabilities{
		NfsMountCreationRequired: true, NfsMountCreationSupported: true, LocalDatastoreSupported: false,
		VmfsExtentExpansionSupported: types.NewBool(true),
	}
	simulator.Map.Put(d)
	w.dss = d

	im := &IscsiManager{w: w, bound: map[string]bool{}}
	im.Self = types.ManagedObjectReference{Type: "IscsiManager", Value: "iscsiManager" + w.idSuffix}
	simulator.Map.Put(im)
	w.iscsi = im
	h.ConfigManager.IscsiManager = &im.Self
}

func (s *StorageSystem) checkHba(dev string) *soap.Fault {
	if s.hba == nil || dev != s.hba.Device {
		return fault("iSCSI adapter "+dev+" not found", &types.NotFound{})
	}
	return nil
}

func (s *StorageSystem) UpdateSoftwareInternetScsiEnabled(ctx *simulator.Context, c *types.UpdateSoftwareInternetScsiEnabled) soap.HasFault {
	if c.Enabled && s.hba == nil {
		s.hba = &types.HostInternetScsiHba{
			HostHostBusAdapter: types.HostHostBusAdapter{
				Key: "key-vim.host.InternetScsiHba-" + swHbaDevice, Device: swHbaDevice, Bus: 0,
				Status: "online", Model: "iSCSI Software Adapter", Driver: "iscsi_vmk", StorageProtocol: "scsi",
			},
			IsSoftwareBased:       true,
			CanBeDisabled:         types.NewBool(true),
			NetworkBindingSupport: types.HostInternetScsiHbaNetworkBindingSupportTypeOptional,
			DiscoveryCapabilities: types.HostInternetScsiHbaDiscoveryCapabilities{
				StaticTargetDiscoverySettable: false, SendTargetsDiscoverySettable: false,
			},
			DiscoveryProperties: types.HostInternetScsiHbaDiscoveryProperties{
				StaticTargetDiscoveryEnabled: true, SendTargetsDiscoveryEnabled: true,
			},
			AuthenticationCapabilities: types.HostInternetScsiHbaAuthenticationCapabilities{
				ChapAuthSettable: true, MutualChapSettable: types.NewBool(true),
				TargetChapSettable: types.NewBool(true), TargetMutualChapSettable: types.NewBool(true),
			},
			IpCapabilities: types.HostInternetScsiHbaIPCapabilities{
				NameAliasSettable: types.NewBool(true), Ipv4EnableSettable: types.NewBool(false),
			},
			IpProperties: types.HostInternetScsiHbaIPProperties{DhcpConfigurationEnabled: false, Ipv4Enabled: types.NewBool(true)},
			IScsiName:    s.w.cfg.IQN,
			IScsiAlias:   s.w.cfg.Hostname,
			MaxSpeedMb:   10000, CurrentSpeedMb: 10000,
		}
		s.adapterChap = types.HostInternetScsiHbaAuthenticationProperties{
			ChapAuthEnabled: false, ChapAuthenticationType: "chapProhibited",
			MutualChapAuthenticationType: "chapProhibited",
		}
		s.hba.AuthenticationProperties = s.adapterChap
	} else if !c.Enabled && s.hba != nil {
		s.hba = nil
		s.discovered = nil
		s.w.mu.Lock()
		for k := range s.w.luns {
			delete(s.w.luns, k)
		}
		s.w.mu.Unlock()
		s.w.vmfsRescan()
	}
	s.StorageDeviceInfo.SoftwareInternetScsiEnabled = c.Enabled
	s.rebuildDeviceInfo()
	return &methods.UpdateSoftwareInternetScsiEnabledBody{Res: &types.UpdateSoftwareInternetScsiEnabledResponse{}}
}

func (s *StorageSystem) UpdateInternetScsiName(ctx *simulator.Context, c *types.UpdateInternetScsiName) soap.HasFault {
	r := &methods.UpdateInternetScsiNameBody{}
	if f := s.checkHba(c.IScsiHbaDevice); f != nil {
		r.Fault_ = f
		return r
	}
	s.hba.IScsiName = c.IScsiName
	s.w.cfg.IQN = c.IScsiName
	s.rebuildDeviceInfo()
	r.Res = &types.UpdateInternetScsiNameResponse{}
	return r
}

func (s *StorageSystem) UpdateInternetScsiAlias(ctx *simulator.Context, c *types.UpdateInternetScsiAlias) soap.HasFault {
	r := &methods.UpdateInternetScsiAliasBody{}
	if f := s.checkHba(c.IScsiHbaDevice); f != nil {
		r.Fault_ = f
		return r
	}
	s.hba.IScsiAlias = c.IScsiAlias
	s.rebuildDeviceInfo()
	r.Res = &types.UpdateInternetScsiAliasResponse{}
	return r
}

func sendTargetKey(addr string, port int32) string { return portalAddr(addr, port) }

func (s *StorageSystem) AddInternetScsiSendTargets(ctx *simulator.Context, c *types.AddInternetScsiSendTargets) soap.HasFault {
	r := &methods.AddInternetScsiSendTargetsBody{}
	if f := s.checkHba(c.IScsiHbaDevice); f != nil {
		r.Fault_ = f
		return r
	}
	for _, t := range c.Targets {
		if t.Port == 0 {
			t.Port = 3260
		}
		dup := false
		for _, e := range s.hba.ConfiguredSendTarget {
			dup = dup || (e.Address == t.Address && e.Port == t.Port)
		}
		if dup {
			continue
		}
		if t.AuthenticationProperties == nil {
			t.AuthenticationProperties = &types.HostInternetScsiHbaAuthenticationProperties{
				ChapInherited: types.NewBool(true), MutualChapInherited: types.NewBool(true),
				ChapAuthenticationType: "chapProhibited", MutualChapAuthenticationType: "chapProhibited",
			}
		} else if t.AuthenticationProperties.ChapSecret != "" {
			s.targetChap[sendTargetKey(t.Address, t.Port)] = ChapConfig{Name: t.AuthenticationProperties.ChapName, Secret: t.AuthenticationProperties.ChapSecret}
			a := *t.AuthenticationProperties
			a.ChapSecret = ""
			t.AuthenticationProperties = &a
		}
		s.hba.ConfiguredSendTarget = append(s.hba.ConfiguredSendTarget, t)
	}
	s.rebuildDeviceInfo()
	r.Res = &types.AddInternetScsiSendTargetsResponse{}
	return r
}

func (s *StorageSystem) RemoveInternetScsiSendTargets(ctx *simulator.Context, c *types.RemoveInternetScsiSendTargets) soap.HasFault {
	r := &methods.RemoveInternetScsiSendTargetsBody{}
	if f := s.checkHba(c.IScsiHbaDevice); f != nil {
		r.Fault_ = f
		return r
	}
	for _, t := range c.Targets {
		if t.Port == 0 {
			t.Port = 3260
		}
		found := false
		out := s.hba.ConfiguredSendTarget[:0]
		for _, e := range s.hba.ConfiguredSendTarget {
			if e.Address == t.Address && e.Port == t.Port {
				found = true
				continue
			}
			out = append(out, e)
		}
		if !found {
			r.Fault_ = fault(fmt.Sprintf("send target %s not found on %s", sendTargetKey(t.Address, t.Port), c.IScsiHbaDevice), &types.NotFound{})
			return r
		}
		s.hba.ConfiguredSendTarget = out
		parent := sendTargetKey(t.Address, t.Port)
		keep := s.discovered[:0]
		for _, d := range s.discovered {
			if d.Parent != parent {
				keep = append(keep, d)
			}
		}
		s.discovered = keep
	}
	s.rebuildDeviceInfo()
	r.Res = &types.RemoveInternetScsiSendTargetsResponse{}
	return r
}

func (s *StorageSystem) AddInternetScsiStaticTargets(ctx *simulator.Context, c *types.AddInternetScsiStaticTargets) soap.HasFault {
	r := &methods.AddInternetScsiStaticTargetsBody{}
	if f := s.checkHba(c.IScsiHbaDevice); f != nil {
		r.Fault_ = f
		return r
	}
	for _, t := range c.Targets {
		if t.Port == 0 {
			t.Port = 3260
		}
		dup := false
		for _, e := range s.hba.ConfiguredStaticTarget {
			dup = dup || (e.Address == t.Address && e.Port == t.Port && e.IScsiName == t.IScsiName && e.DiscoveryMethod == "staticMethod")
		}
		if dup {
			continue
		}
		t.DiscoveryMethod = "staticMethod"
		if t.AuthenticationProperties != nil && t.AuthenticationProperties.ChapSecret != "" {
			s.targetChap[sendTargetKey(t.Address, t.Port)+"|"+t.IScsiName] = ChapConfig{Name: t.AuthenticationProperties.ChapName, Secret: t.AuthenticationProperties.ChapSecret}
			a := *t.AuthenticationProperties
			a.ChapSecret = ""
			t.AuthenticationProperties = &a
		} else if t.AuthenticationProperties == nil {
			t.AuthenticationProperties = &types.HostInternetScsiHbaAuthenticationProperties{
				ChapInherited: types.NewBool(true), MutualChapInherited: types.NewBool(true),
				ChapAuthenticationType: "chapProhibited", MutualChapAuthenticationType: "chapProhibited",
			}
		}
		s.hba.ConfiguredStaticTarget = append(s.hba.ConfiguredStaticTarget, t)
	}
	s.rebuildDeviceInfo()
	r.Res = &types.AddInternetScsiStaticTargetsResponse{}
	return r
}

func (s *StorageSystem) RemoveInternetScsiStaticTargets(ctx *simulator.Context, c *types.RemoveInternetScsiStaticTargets) soap.HasFault {
	r := &methods.RemoveInternetScsiStaticTargetsBody{}
	if f := s.checkHba(c.IScsiHbaDevice); f != nil {
		r.Fault_ = f
		return r
	}
	for _, t := range c.Targets {
		if t.Port == 0 {
			t.Port = 3260
		}
		found := false
		out := s.hba.ConfiguredStaticTarget[:0]
		for _, e := range s.hba.ConfiguredStaticTarget {
			if e.Address == t.Address && e.Port == t.Port && e.IScsiName == t.IScsiName {
				found = true
				continue
			}
			out = append(out, e)
		}
		s.hba.ConfiguredStaticTarget = out
		keep := s.discovered[:0]
		for _, e := range s.discovered {
			if e.Address == t.Address && e.Port == t.Port && e.IScsiName == t.IScsiName {
				found = true
				continue
			}
			keep = append(keep, e)
		}
		s.discovered = keep
		if !found {
			r.Fault_ = fault(fmt.Sprintf("static target %s %s not found on %s", sendTargetKey(t.Address, t.Port), t.IScsiName, c.IScsiHbaDevice), &types.NotFound{})
			return r
		}
	}
	s.rebuildDeviceInfo()
	r.Res = &types.RemoveInternetScsiStaticTargetsResponse{}
	return r
}

func (s *StorageSystem) UpdateInternetScsiAuthenticationProperties(ctx *simulator.Context, c *types.UpdateInternetScsiAuthenticationProperties) soap.HasFault {
	r := &methods.UpdateInternetScsiAuthenticationPropertiesBody{}
	if f := s.checkHba(c.IScsiHbaDevice); f != nil {
		r.Fault_ = f
		return r
	}
	p := c.AuthenticationProperties
	if p.ChapAuthEnabled && p.ChapAuthenticationType == "" {
		p.ChapAuthenticationType = "chapRequired"
	}
	if !p.ChapAuthEnabled && p.ChapAuthenticationType == "" {
		p.ChapAuthenticationType = "chapProhibited"
	}
	if p.MutualChapAuthenticationType == "" {
		p.MutualChapAuthenticationType = "chapProhibited"
	}
	shown := p
	shown.ChapSecret = ""
	shown.MutualChapSecret = ""
	if c.TargetSet == nil {
		s.adapterChap = shown
		s.adapterSecret = p.ChapSecret
		if !p.ChapAuthEnabled || p.ChapAuthenticationType == "chapProhibited" {
			s.adapterSecret = ""
		}
		s.hba.AuthenticationProperties = shown
	} else {
		for _, st := range c.TargetSet.SendTargets {
			key := sendTargetKey(st.Address, st.Port)
			found := false
			for i := range s.hba.ConfiguredSendTarget {
				e := &s.hba.ConfiguredSendTarget[i]
				if sendTargetKey(e.Address, e.Port) == key {
					found = true
					sp := shown
					e.AuthenticationProperties = &sp
				}
			}
			if !found {
				r.Fault_ = fault("send target "+key+" not found", &types.NotFound{})
				return r
			}
			if p.ChapAuthEnabled && p.ChapAuthenticationType != "chapProhibited" && (p.ChapInherited == nil || !*p.ChapInherited) {
				s.targetChap[key] = ChapConfig{Name: p.ChapName, Secret: p.ChapSecret}
			} else {
				delete(s.targetChap, key)
			}
		}
		for _, st := range c.TargetSet.StaticTargets {
			key := sendTargetKey(st.Address, st.Port) + "|" + st.IScsiName
			for i := range s.hba.ConfiguredStaticTarget {
				e := &s.hba.ConfiguredStaticTarget[i]
				if sendTargetKey(e.Address, e.Port)+"|"+e.IScsiName == key {
					sp := shown
					e.AuthenticationProperties = &sp
				}
			}
			if p.ChapAuthEnabled && p.ChapAuthenticationType != "chapProhibited" && (p.ChapInherited == nil || !*p.ChapInherited) {
				s.targetChap[key] = ChapConfig{Name: p.ChapName, Secret: p.ChapSecret}
			} else {
				delete(s.targetChap, key)
			}
		}
	}
	s.rebuildDeviceInfo()
	r.Res = &types.UpdateInternetScsiAuthenticationPropertiesResponse{}
	return r
}

// chapFor picks target-level credentials, else the adapter's.
func (s *StorageSystem) chapFor(portal, iqn string) *ChapConfig {
	if c, ok := s.targetChap[portal+"|"+iqn]; ok {
		return &c
	}
	if c, ok := s.targetChap[portal]; ok {
		return &c
	}
	if s.adapterChap.ChapAuthEnabled && s.adapterSecret != "" {
		return &ChapConfig{Name: s.adapterChap.ChapName, Secret: s.adapterSecret}
	}
	return nil
}

type targetRef struct {
	portal, iqn string
	port        int32
	addr        string
}

// rescanHba discovers targets and LUNs; it never fails, unreachable portals just give no LUNs.
func (s *StorageSystem) rescanHba() {
	if s.hba == nil {
		return
	}
	iqn := s.hba.IScsiName
	var discovered []types.HostInternetScsiHbaStaticTarget
	for _, st := range s.hba.ConfiguredSendTarget {
		portal := sendTargetKey(st.Address, st.Port)
		if !IsLabAddress(portal) {
			s.w.postEvent(fmt.Sprintf("iSCSI send target %s on %s ignored: esxsim only connects to 127.0.0.0/8 and 198.18.0.0/15", portal, swHbaDevice), true)
			continue
		}
		sess, err := Login(portal, iqn, "", s.chapFor(portal, ""))
		if err != nil {
			s.w.postEvent(fmt.Sprintf("iSCSI discovery at %s from %s failed: %v", portal, iqn, err), true)
			continue
		}
		entries, err := sess.SendTargets()
		sess.Close()
		if err != nil {
			s.w.postEvent(fmt.Sprintf("iSCSI SendTargets at %s failed: %v", portal, err), true)
			continue
		}
		for _, e := range entries {
			for _, a := range e.Addresses {
				hp := a
				if i := strings.LastIndex(a, ","); i >= 0 {
					hp = a[:i]
				}
				host, portS, err := splitHostPort(hp)
				if err != nil || !IsLabAddress(host) {
					continue
				}
				port, _ := strconv.Atoi(portS)
				discovered = append(discovered, types.HostInternetScsiHbaStaticTarget{
					Address: host, Port: int32(port), IScsiName: e.Name, DiscoveryMethod: "sendTargetMethod",
					Parent: portal,
					AuthenticationProperties: &types.HostInternetScsiHbaAuthenticationProperties{
						ChapInherited: types.NewBool(true), MutualChapInherited: types.NewBool(true),
						ChapAuthenticationType: "chapProhibited", MutualChapAuthenticationType: "chapProhibited",
					},
				})
			}
		}
	}
	s.discovered = discovered

	var targets []targetRef
	seen := map[string]bool{}
	all := append(append([]types.HostInternetScsiHbaStaticTarget(nil), s.hba.ConfiguredStaticTarget...), discovered...)
	for _, t := range all {
		portal := sendTargetKey(t.Address, t.Port)
		k := portal + "|" + t.IScsiName
		if seen[k] || !IsLabAddress(portal) {
			continue
		}
		seen[k] = true
		targets = append(targets, targetRef{portal: portal, iqn: t.IScsiName, port: t.Port, addr: t.Address})
	}

	found := map[string]*Lun{}
	for _, t := range targets {
		chap := s.chapFor(t.portal, t.iqn)
		if chap == nil {
			// discovered targets inherit the send target's credentials
			for _, d := range discovered {
				if d.IScsiName == t.iqn && sendTargetKey(d.Address, d.Port) == t.portal && d.Parent != "" {
					chap = s.chapFor(d.Parent, "")
				}
			}
		}
		sess, err := Login(t.portal, iqn, t.iqn, chap)
		if err != nil {
			s.w.postEvent(fmt.Sprintf("iSCSI login to %s at %s from %s failed: %v", t.iqn, t.portal, iqn, err), true)
			continue
		}
		luns, err := sess.ReportLuns()
		if err != nil {
			s.w.postEvent(fmt.Sprintf("REPORT LUNS on %s at %s failed: %v", t.iqn, t.portal, err), true)
			sess.Close()
			continue
		}
		for _, ln := range luns {
			id, err := sess.Identify(ln)
			if err != nil {
				log.Printf("INQUIRY %s lun %d: %v", t.iqn, ln, err)
				continue
			}
			if id.DeviceType != 0 || id.Qualifier != 0 || id.Blocks == 0 {
				continue
			}
			l := &Lun{NAA: id.NAA, Ident: *id, Portal: t.portal, Target: t.iqn, LunID: ln, Chap: chap}
			if id.NAA != "" {
				l.Canonical = "naa." + id.NAA
			} else if id.T10 != "" {
				l.Canonical = "t10." + strings.ReplaceAll(id.Vendor+"_"+id.T10, " ", "_")
			} else {
				l.Canonical = fmt.Sprintf("mpx.%s:C0:T%d:L%d", swHbaDevice, len(found), ln)
			}
			if _, dup := found[l.Canonical]; dup {
				continue // second path to the same LUN: keep the first
			}
			dev := &lunDev{s: sess, lun: ln, bs: int(id.BlockSize), size: int64(id.Blocks) * int64(id.BlockSize)}
			v, err := ReadVmfs(dev)
			if err != nil {
				l.VmfsErr = err.Error()
			}
			l.Vmfs = v
			found[l.Canonical] = l
		}
		sess.Close()
	}

	s.w.mu.Lock()
	for name := range s.w.luns {
		if _, ok := found[name]; !ok {
			log.Printf("LUN %s vanished", name)
		}
	}
	for name := range found {
		if _, ok := s.w.luns[name]; !ok {
			log.Printf("LUN %s found (%s at %s)", name, found[name].Target, found[name].Portal)
		}
	}
	s.w.luns = found
	s.w.mu.Unlock()
}

func splitHostPort(hp string) (string, string, error) {
	i := strings.LastIndex(hp, ":")
	if i < 0 {
		return hp, "3260", nil
	}
	return strings.Trim(hp[:i], "[]"), hp[i+1:], nil
}

// rebuildDeviceInfo regenerates HBAs, scsiLun, topology and multipath info.
func (s *StorageSystem) rebuildDeviceInfo() {
	info := s.StorageDeviceInfo
	var hbas []types.BaseHostHostBusAdapter
	for _, a := range info.HostBusAdapter {
		if _, ok := a.(*types.HostInternetScsiHba); !ok {
			hbas = append(hbas, a)
		}
	}
	var topo []types.HostScsiTopologyInterface
	for _, a := range hbas {
		b := a.GetHostHostBusAdapter()
		topo = append(topo, types.HostScsiTopologyInterface{Key: "key-vim.host.ScsiTopology.Interface-" + b.Device, Adapter: b.Key})
	}
	var luns []types.BaseScsiLun
	var mp []types.HostMultipathInfoLogicalUnit
	if s.hba != nil {
		hba := *s.hba
		hba.ConfiguredStaticTarget = append(append([]types.HostInternetScsiHbaStaticTarget(nil), s.hba.ConfiguredStaticTarget...), s.discovered...)
		hbas = append(hbas, &hba)

		s.w.mu.Lock()
		names := make([]string, 0, len(s.w.luns))
		for n := range s.w.luns {
			names = append(names, n)
		}
		sort.Strings(names)
		iface := types.HostScsiTopologyInterface{Key: "key-vim.host.ScsiTopology.Interface-" + swHbaDevice, Adapter: hba.Key}
		targetIdx := map[string]int{}
		for _, n := range names {
			l := s.w.luns[n]
			disk := &types.HostScsiDisk{
				ScsiLun: types.ScsiLun{
					HostDevice:       types.HostDevice{DeviceName: l.DevicePath(), DeviceType: "disk"},
					Key:              l.Key(),
					Uuid:             l.Uuid(),
					CanonicalName:    l.Canonical,
					DisplayName:      fmt.Sprintf("%s iSCSI Disk (%s)", l.Ident.Vendor, l.Canonical),
					LunType:          "disk",
					Vendor:           l.Ident.Vendor,
					Model:            l.Ident.Product,
					Revision:         l.Ident.Revision,
					ScsiLevel:        int32(l.Ident.ScsiLevel),
					SerialNumber:     l.Ident.Serial,
					QueueDepth:       128,
					OperationalState: []string{"ok"},
					VStorageSupport:  "vStorageUnsupported",
					ProtocolEndpoint: types.NewBool(false),
					DurableName:      &types.ScsiLunDurableName{Namespace: "NAA", NamespaceId: 5},
					Descriptor: []types.ScsiLunDescriptor{
						{Quality: "highQuality", Id: l.Canonical},
						{Quality: "mediumQuality", Id: "vml." + l.Uuid()},
					},
				},
				Capacity:     types.HostDiskDimensionsLba{BlockSize: int32(l.Ident.BlockSize), Block: int64(l.Ident.Blocks)},
				DevicePath:   l.DevicePath(),
				Ssd:          types.NewBool(false),
				LocalDisk:    types.NewBool(false),
				ScsiDiskType: "native512",
			}
			if l.NAA == "" {
				disk.DurableName = nil
			}
			luns = append(luns, disk)

			tk := l.Portal + "|" + l.Target
			idx, ok := targetIdx[tk]
			if !ok {
				idx = len(iface.Target)
				targetIdx[tk] = idx
				iface.Target = append(iface.Target, types.HostScsiTopologyTarget{
					Key:    fmt.Sprintf("key-vim.host.ScsiTopology.Target-%s:0:%d", swHbaDevice, idx),
					Target: int32(idx),
					Transport: &types.HostInternetScsiTargetTransport{
						IScsiName: l.Target, IScsiAlias: "", Address: []string{l.Portal},
					},
				})
			}
			t := &iface.Target[idx]
			t.Lun = append(t.Lun, types.HostScsiTopologyLun{
				Key:     fmt.Sprintf("key-vim.host.ScsiTopology.Lun-%s:0:%d:%d", swHbaDevice, idx, l.LunID),
				Lun:     int32(l.LunID),
				ScsiLun: l.Key(),
			})
			pathName := fmt.Sprintf("%s:C0:T%d:L%d", swHbaDevice, idx, l.LunID)
			mp = append(mp, types.HostMultipathInfoLogicalUnit{
				Key: "key-vim.host.MultipathInfo.LogicalUnit-" + l.Canonical,
				Id:  l.Uuid(),
				Lun: l.Key(),
				Path: []types.HostMultipathInfoPath{{
					Key:           "key-vim.host.MultipathInfo.Path-" + pathName,
					Name:          pathName,
					PathState:     "active",
					State:         "active",
					IsWorkingPath: types.NewBool(true),
					Adapter:       hba.Key,
					Lun:           "key-vim.host.MultipathInfo.LogicalUnit-" + l.Canonical,
					Transport: &types.HostInternetScsiTargetTransport{
						IScsiName: l.Target, Address: []string{l.Portal},
					},
				}},
				Policy:                 &types.HostMultipathInfoFixedLogicalUnitPolicy{HostMultipathInfoLogicalUnitPolicy: types.HostMultipathInfoLogicalUnitPolicy{Policy: "VMW_PSP_FIXED"}, Prefer: "key-vim.host.MultipathInfo.Path-" + pathName},
				StorageArrayTypePolicy: &types.HostMultipathInfoLogicalUnitStorageArrayTypePolicy{Policy: "VMW_SATP_DEFAULT_AA"},
			})
		}
		s.w.mu.Unlock()
		topo = append(topo, iface)
	}
	info.HostBusAdapter = hbas
	info.ScsiLun = luns
	info.ScsiTopology = &types.HostScsiTopology{Adapter: topo}
	info.MultipathInfo = &types.HostMultipathInfo{Lun: mp}
	info.PlugStoreTopology = nil
	info.NvmeTopology = nil
	s.w.host.Config.StorageDevice = info
	simulator.Map.Update(s, []types.PropertyChange{{Name: "storageDeviceInfo", Val: info}})
}

func (s *StorageSystem) RescanAllHba(ctx *simulator.Context, _ *types.RescanAllHba) soap.HasFault {
	s.rescanHba()
	s.rebuildDeviceInfo()
	s.w.vmfsRescan()
	return &methods.RescanAllHbaBody{Res: new(types.RescanAllHbaResponse)}
}

func (s *StorageSystem) RescanHba(ctx *simulator.Context, c *types.RescanHba) soap.HasFault {
	r := &methods.RescanHbaBody{}
	if c.HbaDevice == swHbaDevice {
		if s.hba == nil {
			r.Fault_ = fault("adapter "+c.HbaDevice+" not found", &types.NotFound{})
			return r
		}
		s.rescanHba()
		s.rebuildDeviceInfo()
		s.w.vmfsRescan()
	} else {
		known := false
		for _, a := range s.StorageDeviceInfo.HostBusAdapter {
			known = known || a.GetHostHostBusAdapter().Device == c.HbaDevice
		}
		if !known {
			r.Fault_ = fault("adapter "+c.HbaDevice+" not found", &types.NotFound{})
			return r
		}
	}
	r.Res = &types.RescanHbaResponse{}
	return r
}

func (s *StorageSystem) RescanVmfs(ctx *simulator.Context, _ *types.RescanVmfs) soap.HasFault {
	s.w.refreshVmfsHeaders()
	s.w.vmfsRescan()
	return &methods.RescanVmfsBody{Res: new(types.RescanVmfsResponse)}
}

func (s *StorageSystem) RefreshStorageSystem(ctx *simulator.Context, _ *types.RefreshStorageSystem) soap.HasFault {
	s.w.refreshVmfsHeaders()
	s.w.vmfsRescan()
	return &methods.RefreshStorageSystemBody{Res: new(types.RefreshStorageSystemResponse)}
}

func (s *StorageSystem) QueryUnresolvedVmfsVolume(ctx *simulator.Context, _ *types.QueryUnresolvedVmfsVolume) soap.HasFault {
	return &methods.QueryUnresolvedVmfsVolumeBody{Res: &types.QueryUnresolvedVmfsVolumeResponse{Returnval: s.w.unresolvedVolumes()}}
}

func (s *StorageSystem) ResolveMultipleUnresolvedVmfsVolumes(ctx *simulator.Context, c *types.ResolveMultipleUnresolvedVmfsVolumes) soap.HasFault {
	res := s.w.resolveVolumes(c.ResolutionSpec)
	return &methods.ResolveMultipleUnresolvedVmfsVolumesBody{Res: &types.ResolveMultipleUnresolvedVmfsVolumesResponse{Returnval: res}}
}

func (s *StorageSystem) ResolveMultipleUnresolvedVmfsVolumesExTask(ctx *simulator.Context, c *types.ResolveMultipleUnresolvedVmfsVolumesEx_Task) soap.HasFault {
	task := simulator.CreateTask(s.w.host, "resolveMultipleUnresolvedVmfsVolumesEx", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return types.ArrayOfHostUnresolvedVmfsResolutionResult{HostUnresolvedVmfsResolutionResult: s.w.resolveVolumes(c.ResolutionSpec)}, nil
	})
	return &methods.ResolveMultipleUnresolvedVmfsVolumesEx_TaskBody{Res: &types.ResolveMultipleUnresolvedVmfsVolumesEx_TaskResponse{Returnval: task.Run()}}
}

func (s *StorageSystem) UnmountForceMountedVmfsVolume(ctx *simulator.Context, c *types.UnmountForceMountedVmfsVolume) soap.HasFault {
	r := &methods.UnmountForceMountedVmfsVolumeBody{}
	if f := s.w.unmountVolume(c.VmfsUuid, true, true); f != nil {
		r.Fault_ = fault(faultText(f), f)
		return r
	}
	r.Res = &types.UnmountForceMountedVmfsVolumeResponse{}
	return r
}

func (s *StorageSystem) UnmountVmfsVolume(ctx *simulator.Context, c *types.UnmountVmfsVolume) soap.HasFault {
	r := &methods.UnmountVmfsVolumeBody{}
	if f := s.w.unmountVolume(c.VmfsUuid, false, false); f != nil {
		r.Fault_ = fault(faultText(f), f)
		return r
	}
	r.Res = &types.UnmountVmfsVolumeResponse{}
	return r
}

func (s *StorageSystem) MountVmfsVolume(ctx *simulator.Context, c *types.MountVmfsVolume) soap.HasFault {
	r := &methods.MountVmfsVolumeBody{}
	if f := s.w.remountVolume(c.VmfsUuid); f != nil {
		r.Fault_ = fault(faultText(f), f)
		return r
	}
	r.Res = &types.MountVmfsVolumeResponse{}
	return r
}

func (s *StorageSystem) RetrieveDiskPartitionInfo(ctx *simulator.Context, c *types.RetrieveDiskPartitionInfo) soap.HasFault {
	var out []types.HostDiskPartitionInfo
	for _, p := range c.DevicePath {
		l := s.w.lunByPath(p)
		if l == nil {
			continue
		}
		out = append(out, partitionInfo(l))
	}
	return &methods.RetrieveDiskPartitionInfoBody{Res: &types.RetrieveDiskPartitionInfoResponse{Returnval: out}}
}

func partitionInfo(l *Lun) types.HostDiskPartitionInfo {
	total := int64(l.Ident.Blocks)
	pi := types.HostDiskPartitionInfo{
		DeviceName: l.DevicePath(),
		Spec:       types.HostDiskPartitionSpec{PartitionFormat: "gpt", TotalSectors: total},
		Layout:     types.HostDiskPartitionLayout{Total: &types.HostDiskDimensionsLba{BlockSize: int32(l.Ident.BlockSize), Block: total}},
	}
	if l.Vmfs != nil && l.Vmfs.HasGPT {
		start := l.Vmfs.PartStart / int64(l.Ident.BlockSize)
		pi.Spec.Partition = []types.HostDiskPartitionAttributes{{Partition: 1, StartSector: start, EndSector: total - 34, Type: "vmfs", Guid: "AA31E02A400F11DB9590000C2911D1B8"}}
	}
	return pi
}

// lunDev is a LUN opened on an iSCSI session (blockIO).
type lunDev struct {
	s    *IscsiSession
	lun  uint16
	bs   int
	size int64
}

func (d *lunDev) ReadAt(off int64, n int) ([]byte, error) { return d.s.ReadAt(d.lun, off, n, d.bs) }
func (d *lunDev) WriteAt(off int64, b []byte) error       { return d.s.WriteAt(d.lun, off, b, d.bs) }
func (d *lunDev) Size() int64                             { return d.size }
func (d *lunDev) BlockSize() int                          { return d.bs }

// openLun logs in to the LUN's target; the caller closes the session.
func (w *Host) openLun(l *Lun) (*lunDev, error) {
	sess, err := Login(l.Portal, w.cfg.IQN, l.Target, l.Chap)
	if err != nil {
		return nil, err
	}
	return &lunDev{s: sess, lun: l.LunID, bs: int(l.Ident.BlockSize), size: l.Capacity()}, nil
}

func (w *Host) lunByPath(p string) *Lun {
	name := strings.TrimPrefix(p, "/vmfs/devices/disks/")
	if i := strings.Index(name, ":"); i >= 0 {
		name = name[:i]
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.luns[name]
}
