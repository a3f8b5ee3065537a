package main

// Standard-switch networking as real ESXi reports it. One HostNetworkInfo value is
// shared by HostNetworkSystem.networkInfo and HostSystem.config.network, so every
// change shows in both.

import (
	"flag"
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// NetworkSystem replaces the simulator's HostNetworkSystem.
type NetworkSystem struct {
	simulator.HostNetworkSystem
	w *Host
}

const pgKeyPrefix = "key-vim.host.PortGroup-"
const vsKeyPrefix = "key-vim.host.VirtualSwitch-"
const pnicKeyPrefix = "key-vim.host.PhysicalNic-"

func defaultSecurity() *types.HostNetworkSecurityPolicy {
	return &types.HostNetworkSecurityPolicy{
		AllowPromiscuous: types.NewBool(false),
		MacChanges:       types.NewBool(false),
		ForgedTransmits:  types.NewBool(false),
	}
}

func defaultSwitchPolicy(nics []string) *types.HostNetworkPolicy {
	return &types.HostNetworkPolicy{
		Security: defaultSecurity(),
		NicTeaming: &types.HostNicTeamingPolicy{
			Policy:         "loadbalance_srcid",
			ReversePolicy:  types.NewBool(true),
			NotifySwitches: types.NewBool(true),
			RollingOrder:   types.NewBool(false),
			FailureCriteria: &types.HostNicFailureCriteria{
				CheckSpeed: "minimum", Speed: 10,
				CheckDuplex: types.NewBool(false), FullDuplex: types.NewBool(false),
				CheckErrorPercent: types.NewBool(false), Percentage: 0, CheckBeacon: types.NewBool(false),
			},
			NicOrder: &types.HostNicOrderPolicy{ActiveNic: append([]string(nil), nics...)},
		},
		OffloadPolicy: &types.HostNetOffloadCapabilities{
			CsumOffload: types.NewBool(true), TcpSegmentation: types.NewBool(true), ZeroCopyXmit: types.NewBool(true),
		},
		ShapingPolicy: &types.HostNetworkTrafficShapingPolicy{Enabled: types.NewBool(false)},
	}
}

func bridgeNics(spec *types.HostVirtualSwitchSpec) []string {
	if b, ok := spec.Bridge.(*types.HostVirtualSwitchBondBridge); ok && b != nil {
		return b.NicDevice
	}
	if b, ok := spec.Bridge.(*types.HostVirtualSwitchSimpleBridge); ok && b != nil {
		return []string{b.NicDevice}
	}
	return nil
}

// dellIDRAC (-dell-idrac) gives every host the iDRAC USB NIC of a Dell server, as pyvmomi
// 6.7.3's recorded Dell ESXi 6.7 host shows it (tests/fixtures/test_json_host_explode.yaml,
// host-14, property config): see addDellIDRAC. A package flag rather than a Config field:
// it only adds to the host's starting state.
var dellIDRAC bool

func init() {
	flag.BoolVar(&dellIDRAC, "dell-idrac", false,
		"model a Dell host's iDRAC USB NIC: pnic vusb0 and vmk1 at 169.254.0.2 on the hidden port group \"iDRAC Network\"")
}

// The port group of the iDRAC NIC. Real hosts keep it on vSwitchiDRACvusb (esxcli shows it), but
// the vSphere API lists neither: config.network.vswitch and .portgroup of the recorded Dell host
// hold only vSwitch0 and its two port groups, and host.network only one Network.
const idracPortGroup = "iDRAC Network"

// addDellIDRAC adds what the recorded Dell host shows of its iDRAC OS-passthrough link, and
// nothing more: config.network.pnic vusb0 (driver cdce, no PCI address, 100 Mb/s full duplex,
// not schedulable: hardwareUnsupported), config.network.vnic vmk1 on port group "iDRAC Network"
// (169.254.0.2/255.255.255.0, MTU 1500, defaultTcpipStack, no port key), and the route
// 169.254.0.0/24 via vmk1. No vSwitch, port group or Network entity: the API shows none.
func (w *Host) addDellIDRAC(info *types.HostNetworkInfo) {
	link := types.PhysicalNicLinkInfo{SpeedMb: 100, Duplex: true}
	info.Pnic = append(info.Pnic, types.PhysicalNic{
		Key: pnicKeyPrefix + "vusb0", Device: "vusb0", Driver: "cdce",
		LinkSpeed: &link, ValidLinkSpecification: []types.PhysicalNicLinkInfo{link},
		Spec:                                  types.PhysicalNicSpec{Ip: &types.HostIpConfig{}, LinkSpeed: &link},
		Mac:                                   fmt.Sprintf("5c:f9:dd:%s:05", macSuffix(w.cfg.Hostname)), // Dell's OUI
		VmDirectPathGen2Supported:             types.NewBool(false),
		ResourcePoolSchedulerAllowed:          types.NewBool(false),
		ResourcePoolSchedulerDisallowedReason: []string{"hardwareUnsupported"},
		AutoNegotiateSupported:                types.NewBool(false),
		EnhancedNetworkingStackSupported:      types.NewBool(false),
	})
	info.Vnic = append(info.Vnic, types.HostVirtualNic{
		Device: "vmk1", Key: "key-vim.host.VirtualNic-vmk1", Portgroup: idracPortGroup,
		Spec: types.HostVirtualNicSpec{
			Ip:                  &types.HostIpConfig{Dhcp: false, IpAddress: "169.254.0.2", SubnetMask: "255.255.255.0"},
			Mac:                 fmt.Sprintf("00:50:56:%s:13", macSuffix(w.cfg.Hostname+"idrac")),
			Portgroup:           idracPortGroup,
			Mtu:                 1500,
			TsoEnabled:          types.NewBool(true),
			NetStackInstanceKey: "defaultTcpipStack",
		},
	})
	// The route table is govmomi's package-level template: copy before adding to it.
	rt := types.HostIpRouteTableInfo{}
	if info.RouteTableInfo != nil {
		rt = *info.RouteTableInfo
	}
	rt.IpRoute = append(append([]types.HostIpRouteEntry(nil), rt.IpRoute...),
		types.HostIpRouteEntry{Network: "169.254.0.0", PrefixLength: 24, Gateway: "0.0.0.0", DeviceName: "vmk1"})
	info.RouteTableInfo = &rt
}

func (w *Host) setupNetwork() {
	h := w.host
	tmpl := h.Config.Network
	info := &types.HostNetworkInfo{}

	base := tmpl.Pnic[0]
	for i := 0; i < 4; i++ {
		p := base
		p.Device = fmt.Sprintf("vmnic%d", i)
		p.Key = pnicKeyPrefix + p.Device
		p.Pci = fmt.Sprintf("0000:0b:%02x.0", i)
		p.Mac = fmt.Sprintf("00:0c:29:%s:%02x", macSuffix(w.cfg.Hostname), 0xa0+i)
		p.FcoeConfiguration = nil
		info.Pnic = append(info.Pnic, p)
	}

	vs := types.HostVirtualSwitch{
		Name: "vSwitch0", Key: vsKeyPrefix + "vSwitch0", NumPorts: 128, Mtu: 1500,
		Spec: types.HostVirtualSwitchSpec{
			NumPorts: 128,
			Bridge:   &types.HostVirtualSwitchBondBridge{NicDevice: []string{"vmnic0"}},
			Policy:   defaultSwitchPolicy([]string{"vmnic0"}),
		},
	}
	info.Vswitch = []types.HostVirtualSwitch{vs}
	for _, name := range []string{"VM Network", "Management Network"} {
		info.Portgroup = append(info.Portgroup, types.HostPortGroup{
			Key:     pgKeyPrefix + name,
			Vswitch: vs.Key,
			Spec: types.HostPortGroupSpec{
				Name: name, VswitchName: "vSwitch0",
				Policy: types.HostNetworkPolicy{Security: &types.HostNetworkSecurityPolicy{}},
			},
		})
	}
	ip, _, _ := net.SplitHostPort(w.cfg.Listen)
	vmk0 := tmpl.Vnic[0]
	vmk0.Spec.Ip = &types.HostIpConfig{Dhcp: false, IpAddress: ip, SubnetMask: "255.0.0.0"}
	vmk0.Spec.Mac = info.Pnic[0].Mac
	vmk0.Port = "key-vim.host.PortGroup.Port-1"
	info.Vnic = []types.HostVirtualNic{vmk0}
	info.NetStackInstance = tmpl.NetStackInstance
	info.IpRouteConfig = tmpl.IpRouteConfig
	info.RouteTableInfo = tmpl.RouteTableInfo
	info.Dhcp = tmpl.Dhcp
	info.Nat = tmpl.Nat
	info.DnsConfig = tmpl.DnsConfig
	if dellIDRAC {
		w.addDellIDRAC(info)
	}

	h.Config.Network = info
	h.Config.VirtualNicManagerInfo = nil
	h.Config.Vmotion = nil

	old := simulator.Map.Get(*h.ConfigManager.NetworkSystem).(*simulator.HostNetworkSystem)
	ns := &NetworkSystem{HostNetworkSystem: *old, w: w}
	ns.NetworkInfo = info
	ns.Host = &h.HostSystem
	simulator.Map.Put(ns)
	w.netsys = ns
	ns.recompute()

	vm := &VirtualNicManager{w: w}
	vm.Self = types.ManagedObjectReference{Type: "HostVirtualNicManager", Value: "ha-vnic-mgr" + w.idSuffix}
	simulator.Map.Put(vm)
	w.vnicMgr = vm
	h.ConfigManager.VirtualNicManager = &vm.Self
	vm.refresh()
	if w.sim.vcenter {
		// vCenter's datacenter has one "VM Network" entity; each host's port group joins it.
		ns.addNetworkEntity("VM Network")
	}
}

func macSuffix(s string) string {
	h := sha1Sum([]byte(s))
	return fmt.Sprintf("%02x:%02x", h[0], h[1])
}

func (s *NetworkSystem) info() *types.HostNetworkInfo { return s.NetworkInfo }

func (s *NetworkSystem) findSwitch(name string) *types.HostVirtualSwitch {
	for i := range s.NetworkInfo.Vswitch {
		if s.NetworkInfo.Vswitch[i].Name == name {
			return &s.NetworkInfo.Vswitch[i]
		}
	}
	return nil
}

func (s *NetworkSystem) findPortGroup(name string) *types.HostPortGroup {
	for i := range s.NetworkInfo.Portgroup {
		if s.NetworkInfo.Portgroup[i].Spec.Name == name {
			return &s.NetworkInfo.Portgroup[i]
		}
	}
	return nil
}

func (s *NetworkSystem) findVnic(device string) *types.HostVirtualNic {
	for i := range s.NetworkInfo.Vnic {
		if s.NetworkInfo.Vnic[i].Device == device {
			return &s.NetworkInfo.Vnic[i]
		}
	}
	return nil
}

func (s *NetworkSystem) pnicExists(dev string) bool {
	for _, p := range s.NetworkInfo.Pnic {
		if p.Device == dev {
			return true
		}
	}
	return false
}

// PortGroupActiveUplinks returns the effective active uplinks of a port group.
func (s *NetworkSystem) PortGroupActiveUplinks(pg string) ([]string, []string, bool) {
	p := s.findPortGroup(pg)
	if p == nil {
		return nil, nil, false
	}
	t := p.ComputedPolicy.NicTeaming
	if t == nil || t.NicOrder == nil {
		return nil, nil, true
	}
	return t.NicOrder.ActiveNic, t.NicOrder.StandbyNic, true
}

// recompute derives computed policies, port lists, pnic keys and port counts.
func (s *NetworkSystem) recompute() {
	info := s.NetworkInfo
	for i := range info.Vswitch {
		vs := &info.Vswitch[i]
		vs.Key = vsKeyPrefix + vs.Name
		vs.Pnic = nil
		for _, n := range bridgeNics(&vs.Spec) {
			vs.Pnic = append(vs.Pnic, pnicKeyPrefix+n)
		}
		if vs.Spec.Mtu != 0 {
			vs.Mtu = vs.Spec.Mtu
		} else if vs.Mtu == 0 {
			vs.Mtu = 1500
		}
		vs.NumPorts = vs.Spec.NumPorts
		vs.Portgroup = nil
	}
	used := map[string]int32{}
	for i := range info.Portgroup {
		pg := &info.Portgroup[i]
		pg.Key = pgKeyPrefix + pg.Spec.Name
		vs := s.findSwitch(pg.Spec.VswitchName)
		if vs == nil {
			continue
		}
		pg.Vswitch = vs.Key
		vs.Portgroup = append(vs.Portgroup, pg.Key)
		if pg.Spec.Policy.Security == nil {
			pg.Spec.Policy.Security = &types.HostNetworkSecurityPolicy{}
		}
		pg.ComputedPolicy = computePolicy(vs.Spec.Policy, &pg.Spec.Policy)
		pg.Port = nil
		for _, v := range info.Vnic {
			if v.Portgroup == pg.Spec.Name {
				pg.Port = append(pg.Port, types.HostPortGroupPort{Key: v.Port, Mac: []string{v.Spec.Mac}, Type: "host"})
				used[vs.Name]++
			}
		}
	}
	for i := range info.Vswitch {
		vs := &info.Vswitch[i]
		vs.NumPortsAvailable = vs.NumPorts - used[vs.Name]
		if vs.NumPortsAvailable < 0 {
			vs.NumPortsAvailable = 0
		}
	}
	if s.w != nil && s.w.vnicMgr != nil {
		s.w.vnicMgr.refresh()
	}
}

func computePolicy(sw *types.HostNetworkPolicy, pg *types.HostNetworkPolicy) types.HostNetworkPolicy {
	out := types.HostNetworkPolicy{}
	if sw != nil {
		out = *sw
	}
	if pg.Security != nil {
		sec := types.HostNetworkSecurityPolicy{}
		if out.Security != nil {
			sec = *out.Security
		}
		if pg.Security.AllowPromiscuous != nil {
			sec.AllowPromiscuous = pg.Security.AllowPromiscuous
		}
		if pg.Security.MacChanges != nil {
			sec.MacChanges = pg.Security.MacChanges
		}
		if pg.Security.ForgedTransmits != nil {
			sec.ForgedTransmits = pg.Security.ForgedTransmits
		}
		out.Security = &sec
	}
	if pg.NicTeaming != nil {
		t := types.HostNicTeamingPolicy{}
		if out.NicTeaming != nil {
			t = *out.NicTeaming
		}
		p := pg.NicTeaming
		if p.Policy != "" {
			t.Policy = p.Policy
		}
		if p.ReversePolicy != nil {
			t.ReversePolicy = p.ReversePolicy
		}
		if p.NotifySwitches != nil {
			t.NotifySwitches = p.NotifySwitches
		}
		if p.RollingOrder != nil {
			t.RollingOrder = p.RollingOrder
		}
		if p.FailureCriteria != nil {
			t.FailureCriteria = p.FailureCriteria
		}
		if p.NicOrder != nil {
			t.NicOrder = p.NicOrder
		}
		out.NicTeaming = &t
	}
	if pg.OffloadPolicy != nil {
		out.OffloadPolicy = pg.OffloadPolicy
	}
	if pg.ShapingPolicy != nil {
		out.ShapingPolicy = pg.ShapingPolicy
	}
	return out
}

func (s *NetworkSystem) validateSwitchSpec(name string, spec *types.HostVirtualSwitchSpec) types.BaseMethodFault {
	if spec.Mtu != 0 && (spec.Mtu < 1280 || spec.Mtu > 9000) {
		return withMsg(&types.InvalidArgument{InvalidProperty: "spec.mtu"}, fmt.Sprintf("MTU %d out of range 1280-9000", spec.Mtu))
	}
	for _, n := range bridgeNics(spec) {
		if !s.pnicExists(n) {
			return withMsg(&types.NotFound{}, "physical NIC "+n+" not found")
		}
		for _, vs := range s.NetworkInfo.Vswitch {
			if vs.Name == name {
				continue
			}
			for _, o := range bridgeNics(&vs.Spec) {
				if o == n {
					return withMsg(&types.ResourceInUse{Type: "PhysicalNic", Name: n}, fmt.Sprintf("physical NIC %s is already used by %s", n, vs.Name))
				}
			}
		}
	}
	if spec.Policy != nil && spec.Policy.NicTeaming != nil && spec.Policy.NicTeaming.NicOrder != nil {
		nics := map[string]bool{}
		for _, n := range bridgeNics(spec) {
			nics[n] = true
		}
		o := spec.Policy.NicTeaming.NicOrder
		for _, n := range append(append([]string(nil), o.ActiveNic...), o.StandbyNic...) {
			if !nics[n] {
				return withMsg(&types.InvalidArgument{InvalidProperty: "spec.policy.nicTeaming.nicOrder"}, "NIC "+n+" in the failover order is not an uplink of "+name)
			}
		}
	}
	return nil
}

func normalizeSwitchSpec(spec types.HostVirtualSwitchSpec) types.HostVirtualSwitchSpec {
	if spec.NumPorts == 0 {
		spec.NumPorts = 128
	}
	nics := bridgeNics(&spec)
	if spec.Policy == nil {
		spec.Policy = defaultSwitchPolicy(nics)
	} else {
		p := *spec.Policy
		d := defaultSwitchPolicy(nics)
		if p.Security == nil {
			p.Security = d.Security
		}
		if p.NicTeaming == nil {
			p.NicTeaming = d.NicTeaming
		} else if p.NicTeaming.NicOrder == nil {
			t := *p.NicTeaming
			t.NicOrder = d.NicTeaming.NicOrder
			p.NicTeaming = &t
		}
		if p.OffloadPolicy == nil {
			p.OffloadPolicy = d.OffloadPolicy
		}
		if p.ShapingPolicy == nil {
			p.ShapingPolicy = d.ShapingPolicy
		}
		spec.Policy = &p
	}
	return spec
}

func (s *NetworkSystem) AddVirtualSwitch(ctx *simulator.Context, c *types.AddVirtualSwitch) soap.HasFault {
	r := &methods.AddVirtualSwitchBody{}
	if c.VswitchName == "" || len(c.VswitchName) > 32 {
		r.Fault_ = fault("invalid vSwitch name", &types.InvalidArgument{InvalidProperty: "vswitchName"})
		return r
	}
	if s.findSwitch(c.VswitchName) != nil {
		r.Fault_ = fault("vSwitch "+c.VswitchName+" already exists", &types.AlreadyExists{Name: c.VswitchName})
		return r
	}
	spec := types.HostVirtualSwitchSpec{NumPorts: 128}
	if c.Spec != nil {
		spec = *c.Spec
	}
	if f := s.validateSwitchSpec(c.VswitchName, &spec); f != nil {
		r.Fault_ = fault(faultText(f), f)
		return r
	}
	spec = normalizeSwitchSpec(spec)
	s.NetworkInfo.Vswitch = append(s.NetworkInfo.Vswitch, types.HostVirtualSwitch{Name: c.VswitchName, Spec: spec, Mtu: spec.Mtu})
	s.recompute()
	r.Res = &types.AddVirtualSwitchResponse{}
	return r
}

func (s *NetworkSystem) UpdateVirtualSwitch(ctx *simulator.Context, c *types.UpdateVirtualSwitch) soap.HasFault {
	r := &methods.UpdateVirtualSwitchBody{}
	vs := s.findSwitch(c.VswitchName)
	if vs == nil {
		r.Fault_ = fault("vSwitch "+c.VswitchName+" not found", &types.NotFound{})
		return r
	}
	if f := s.validateSwitchSpec(c.VswitchName, &c.Spec); f != nil {
		r.Fault_ = fault(faultText(f), f)
		return r
	}
	vs.Spec = normalizeSwitchSpec(c.Spec)
	if c.Spec.Mtu != 0 {
		vs.Mtu = c.Spec.Mtu
	}
	s.recompute()
	r.Res = &types.UpdateVirtualSwitchResponse{}
	return r
}

func (s *NetworkSystem) vmsOnNetwork(name string) []string {
	var names []string
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		for _, n := range vmNetworkNames(vm) {
			if n == name {
				names = append(names, vm.Name)
			}
		}
	}
	return names
}

func (s *NetworkSystem) RemoveVirtualSwitch(ctx *simulator.Context, c *types.RemoveVirtualSwitch) soap.HasFault {
	r := &methods.RemoveVirtualSwitchBody{}
	vs := s.findSwitch(c.VswitchName)
	if vs == nil {
		r.Fault_ = fault("vSwitch "+c.VswitchName+" not found", &types.NotFound{})
		return r
	}
	var pgs []string
	for _, pg := range s.NetworkInfo.Portgroup {
		if pg.Spec.VswitchName != c.VswitchName {
			continue
		}
		pgs = append(pgs, pg.Spec.Name)
		for _, v := range s.NetworkInfo.Vnic {
			if v.Portgroup == pg.Spec.Name {
				f := &types.ResourceInUse{Type: "HostVirtualNic", Name: v.Device}
				r.Fault_ = fault(fmt.Sprintf("vSwitch %s is in use: VMkernel NIC %s on port group %s", c.VswitchName, v.Device, pg.Spec.Name), f)
				return r
			}
		}
		if vms := s.vmsOnNetwork(pg.Spec.Name); len(vms) > 0 {
			r.Fault_ = fault(fmt.Sprintf("vSwitch %s is in use: port group %s has VMs %s", c.VswitchName, pg.Spec.Name, strings.Join(vms, ", ")), &types.ResourceInUse{Type: "Network", Name: pg.Spec.Name})
			return r
		}
	}
	for _, pg := range pgs {
		s.removePortGroup(pg)
	}
	for i := range s.NetworkInfo.Vswitch {
		if s.NetworkInfo.Vswitch[i].Name == c.VswitchName {
			s.NetworkInfo.Vswitch = append(s.NetworkInfo.Vswitch[:i], s.NetworkInfo.Vswitch[i+1:]...)
			break
		}
	}
	s.recompute()
	r.Res = &types.RemoveVirtualSwitchResponse{}
	return r
}

func (s *NetworkSystem) networkFolder() types.ManagedObjectReference {
	return s.w.dc.NetworkFolder
}

func (s *NetworkSystem) findNetworkEntity(name string) mo.Entity {
	f := simulator.Map.Get(s.networkFolder()).(*simulator.Folder)
	return simulator.Map.FindByName(name, f.ChildEntity)
}

func (s *NetworkSystem) addNetworkEntity(name string) {
	h := s.w.host
	if e := s.findNetworkEntity(name); e != nil {
		// Another host of the datacenter has a port group of that name: one Network
		// entity lists every host that carries it, as vCenter shows standard networks.
		if n, ok := e.(*mo.Network); ok {
			addRef(&n.Host, h.Self)
		}
		addRef(&h.Network, e.Reference())
		if cr := computeResource(h); cr != nil {
			addRef(&cr.Network, e.Reference())
		}
		return
	}
	n := &mo.Network{}
	n.Name = name
	n.Self = types.ManagedObjectReference{Type: "Network", Value: "HaNetwork-" + name}
	n.Host = []types.ManagedObjectReference{s.w.host.Self}
	n.Summary = &types.NetworkSummary{Network: &n.Self, Name: name, Accessible: true}
	putChild(s.networkFolder(), n)
	dc := s.w.dc
	simulator.Map.AddReference(dc, &dc.Network, n.Self)
	addRef(&h.Network, n.Self)
	if cr := computeResource(h); cr != nil {
		addRef(&cr.Network, n.Self)
	}
}

func (s *NetworkSystem) removeNetworkEntity(name string) {
	e := s.findNetworkEntity(name)
	if e == nil {
		return
	}
	ref := e.Reference()
	h := s.w.host
	simulator.RemoveReference(&h.Network, ref)
	if n, ok := e.(*mo.Network); ok {
		simulator.RemoveReference(&n.Host, h.Self)
		if len(n.Host) > 0 {
			return // still a port group on another host of the datacenter
		}
	}
	dc := s.w.dc
	simulator.Map.RemoveReference(dc, &dc.Network, ref)
	if cr := computeResource(h); cr != nil {
		simulator.RemoveReference(&cr.Network, ref)
	}
	removeChild(s.networkFolder(), ref)
}

func (s *NetworkSystem) AddPortGroup(ctx *simulator.Context, c *types.AddPortGroup) soap.HasFault {
	r := &methods.AddPortGroupBody{}
	spec := c.Portgrp
	if spec.Name == "" {
		r.Fault_ = fault("port group name is empty", &types.InvalidArgument{InvalidProperty: "portgrp.name"})
		return r
	}
	if spec.VlanId < 0 || spec.VlanId > 4095 {
		r.Fault_ = fault(fmt.Sprintf("VLAN id %d out of range", spec.VlanId), &types.InvalidArgument{InvalidProperty: "portgrp.vlanId"})
		return r
	}
	if s.findSwitch(spec.VswitchName) == nil {
		r.Fault_ = fault("vSwitch "+spec.VswitchName+" not found", &types.NotFound{})
		return r
	}
	if s.findPortGroup(spec.Name) != nil {
		r.Fault_ = fault("port group "+spec.Name+" already exists", &types.AlreadyExists{Name: spec.Name})
		return r
	}
	if spec.Policy.Security == nil {
		spec.Policy.Security = &types.HostNetworkSecurityPolicy{}
	}
	s.NetworkInfo.Portgroup = append(s.NetworkInfo.Portgroup, types.HostPortGroup{Spec: spec})
	s.addNetworkEntity(spec.Name)
	s.recompute()
	r.Res = &types.AddPortGroupResponse{}
	return r
}

func (s *NetworkSystem) UpdatePortGroup(ctx *simulator.Context, c *types.UpdatePortGroup) soap.HasFault {
	r := &methods.UpdatePortGroupBody{}
	pg := s.findPortGroup(c.PgName)
	if pg == nil {
		r.Fault_ = fault("port group "+c.PgName+" not found", &types.NotFound{})
		return r
	}
	spec := c.Portgrp
	if spec.Name == "" {
		spec.Name = c.PgName
	}
	if spec.VswitchName == "" {
		spec.VswitchName = pg.Spec.VswitchName
	}
	if s.findSwitch(spec.VswitchName) == nil {
		r.Fault_ = fault("vSwitch "+spec.VswitchName+" not found", &types.NotFound{})
		return r
	}
	if spec.Name != c.PgName && s.findPortGroup(spec.Name) != nil {
		r.Fault_ = fault("port group "+spec.Name+" already exists", &types.AlreadyExists{Name: spec.Name})
		return r
	}
	if spec.VlanId < 0 || spec.VlanId > 4095 {
		r.Fault_ = fault(fmt.Sprintf("VLAN id %d out of range", spec.VlanId), &types.InvalidArgument{InvalidProperty: "portgrp.vlanId"})
		return r
	}
	if spec.Policy.NicTeaming != nil && spec.Policy.NicTeaming.NicOrder != nil {
		vs := s.findSwitch(spec.VswitchName)
		nics := map[string]bool{}
		for _, n := range bridgeNics(&vs.Spec) {
			nics[n] = true
		}
		o := spec.Policy.NicTeaming.NicOrder
		for _, n := range append(append([]string(nil), o.ActiveNic...), o.StandbyNic...) {
			if !nics[n] {
				f := &types.InvalidArgument{InvalidProperty: "portgrp.policy.nicTeaming.nicOrder"}
				r.Fault_ = fault("NIC "+n+" in the failover order is not an uplink of "+spec.VswitchName, f)
				return r
			}
		}
	}
	if spec.Policy.Security == nil {
		spec.Policy.Security = &types.HostNetworkSecurityPolicy{}
	}
	if spec.Name != c.PgName {
		for i := range s.NetworkInfo.Vnic {
			if s.NetworkInfo.Vnic[i].Portgroup == c.PgName {
				s.NetworkInfo.Vnic[i].Portgroup = spec.Name
				s.NetworkInfo.Vnic[i].Spec.Portgroup = spec.Name
			}
		}
		s.removeNetworkEntity(c.PgName)
		s.addNetworkEntity(spec.Name)
	}
	pg.Spec = spec
	s.recompute()
	r.Res = &types.UpdatePortGroupResponse{}
	return r
}

func (s *NetworkSystem) removePortGroup(name string) {
	for i := range s.NetworkInfo.Portgroup {
		if s.NetworkInfo.Portgroup[i].Spec.Name == name {
			s.NetworkInfo.Portgroup = append(s.NetworkInfo.Portgroup[:i], s.NetworkInfo.Portgroup[i+1:]...)
			break
		}
	}
	s.removeNetworkEntity(name)
}

func (s *NetworkSystem) RemovePortGroup(ctx *simulator.Context, c *types.RemovePortGroup) soap.HasFault {
	r := &methods.RemovePortGroupBody{}
	if s.findPortGroup(c.PgName) == nil {
		r.Fault_ = fault("port group "+c.PgName+" not found", &types.NotFound{})
		return r
	}
	for _, v := range s.NetworkInfo.Vnic {
		if v.Portgroup == c.PgName {
			r.Fault_ = fault(fmt.Sprintf("port group %s is in use by VMkernel NIC %s", c.PgName, v.Device), &types.ResourceInUse{Type: "HostVirtualNic", Name: v.Device})
			return r
		}
	}
	if vms := s.vmsOnNetwork(c.PgName); len(vms) > 0 {
		r.Fault_ = fault(fmt.Sprintf("port group %s is in use by VMs %s", c.PgName, strings.Join(vms, ", ")), &types.ResourceInUse{Type: "Network", Name: c.PgName})
		return r
	}
	s.removePortGroup(c.PgName)
	s.recompute()
	r.Res = &types.RemovePortGroupResponse{}
	return r
}

func (s *NetworkSystem) nextVmk() string {
	used := map[string]bool{}
	for _, v := range s.NetworkInfo.Vnic {
		used[v.Device] = true
	}
	for i := 0; ; i++ {
		d := fmt.Sprintf("vmk%d", i)
		if !used[d] {
			return d
		}
	}
}

func validIPConfig(ip *types.HostIpConfig) types.BaseMethodFault {
	if ip == nil || ip.Dhcp {
		return nil
	}
	if net.ParseIP(ip.IpAddress) == nil {
		return withMsg(&types.InvalidArgument{InvalidProperty: "nic.ip.ipAddress"}, "invalid IP address "+ip.IpAddress)
	}
	if ip.SubnetMask != "" && net.ParseIP(ip.SubnetMask) == nil {
		return withMsg(&types.InvalidArgument{InvalidProperty: "nic.ip.subnetMask"}, "invalid subnet mask "+ip.SubnetMask)
	}
	return nil
}

func (s *NetworkSystem) AddVirtualNic(ctx *simulator.Context, c *types.AddVirtualNic) soap.HasFault {
	r := &methods.AddVirtualNicBody{}
	if s.findPortGroup(c.Portgroup) == nil {
		r.Fault_ = fault("port group "+c.Portgroup+" not found", &types.NotFound{})
		return r
	}
	for _, v := range s.NetworkInfo.Vnic {
		if v.Portgroup == c.Portgroup {
			r.Fault_ = fault(fmt.Sprintf("port group %s already has VMkernel NIC %s", c.Portgroup, v.Device), &types.AlreadyExists{Name: c.Portgroup})
			return r
		}
	}
	if f := validIPConfig(c.Nic.Ip); f != nil {
		r.Fault_ = fault(faultText(f), f)
		return r
	}
	dev := s.nextVmk()
	spec := c.Nic
	spec.Portgroup = c.Portgroup
	if spec.Mtu == 0 {
		spec.Mtu = 1500
	}
	if spec.Mac == "" {
		n := len(s.NetworkInfo.Vnic) + 1
		spec.Mac = fmt.Sprintf("00:50:56:%s:%02x", macSuffix(s.w.cfg.Hostname+dev), n&0xff)
	}
	if spec.Ip == nil {
		spec.Ip = &types.HostIpConfig{Dhcp: true}
	}
	if spec.NetStackInstanceKey == "" {
		spec.NetStackInstanceKey = "defaultTcpipStack"
	}
	if spec.TsoEnabled == nil {
		spec.TsoEnabled = types.NewBool(true)
	}
	s.NetworkInfo.Vnic = append(s.NetworkInfo.Vnic, types.HostVirtualNic{
		Device: dev, Key: "key-vim.host.VirtualNic-" + dev, Portgroup: c.Portgroup, Spec: spec,
		Port: fmt.Sprintf("key-vim.host.PortGroup.Port-%d", 100+len(s.NetworkInfo.Vnic)),
	})
	s.recompute()
	r.Res = &types.AddVirtualNicResponse{Returnval: dev}
	return r
}

func (s *NetworkSystem) UpdateVirtualNic(ctx *simulator.Context, c *types.UpdateVirtualNic) soap.HasFault {
	r := &methods.UpdateVirtualNicBody{}
	v := s.findVnic(c.Device)
	if v == nil {
		r.Fault_ = fault("VMkernel NIC "+c.Device+" not found", &types.NotFound{})
		return r
	}
	if f := validIPConfig(c.Nic.Ip); f != nil {
		r.Fault_ = fault(faultText(f), f)
		return r
	}
	if c.Nic.Portgroup != "" && c.Nic.Portgroup != v.Portgroup {
		if s.findPortGroup(c.Nic.Portgroup) == nil {
			r.Fault_ = fault("port group "+c.Nic.Portgroup+" not found", &types.NotFound{})
			return r
		}
		v.Portgroup = c.Nic.Portgroup
		v.Spec.Portgroup = c.Nic.Portgroup
	}
	if c.Nic.Ip != nil {
		ip := *c.Nic.Ip
		v.Spec.Ip = &ip
	}
	if c.Nic.Mtu != 0 {
		if c.Nic.Mtu < 1280 || c.Nic.Mtu > 9000 {
			r.Fault_ = fault(fmt.Sprintf("MTU %d out of range 1280-9000", c.Nic.Mtu), &types.InvalidArgument{InvalidProperty: "nic.mtu"})
			return r
		}
		v.Spec.Mtu = c.Nic.Mtu
	}
	if c.Nic.Mac != "" {
		v.Spec.Mac = c.Nic.Mac
	}
	if c.Nic.TsoEnabled != nil {
		v.Spec.TsoEnabled = c.Nic.TsoEnabled
	}
	s.recompute()
	r.Res = &types.UpdateVirtualNicResponse{}
	return r
}

func (s *NetworkSystem) RemoveVirtualNic(ctx *simulator.Context, c *types.RemoveVirtualNic) soap.HasFault {
	r := &methods.RemoveVirtualNicBody{}
	if s.findVnic(c.Device) == nil {
		r.Fault_ = fault("VMkernel NIC "+c.Device+" not found", &types.NotFound{})
		return r
	}
	if s.w.iscsi != nil && s.w.iscsi.isBound(c.Device) {
		r.Fault_ = fault("VMkernel NIC "+c.Device+" is bound to the software iSCSI adapter; unbind it first", &types.ResourceInUse{Type: "HostVirtualNic", Name: c.Device})
		return r
	}
	for i := range s.NetworkInfo.Vnic {
		if s.NetworkInfo.Vnic[i].Device == c.Device {
			s.NetworkInfo.Vnic = append(s.NetworkInfo.Vnic[:i], s.NetworkInfo.Vnic[i+1:]...)
			break
		}
	}
	if s.w.vnicMgr != nil {
		s.w.vnicMgr.deselectAll(c.Device)
	}
	s.recompute()
	r.Res = &types.RemoveVirtualNicResponse{}
	return r
}

func (s *NetworkSystem) RefreshNetworkSystem(ctx *simulator.Context, c *types.RefreshNetworkSystem) soap.HasFault {
	return &methods.RefreshNetworkSystemBody{Res: &types.RefreshNetworkSystemResponse{}}
}

// QueryNetworkHint is the simulator's, but with our host pointer.
func (s *NetworkSystem) QueryNetworkHint(req *types.QueryNetworkHint) soap.HasFault {
	var info []types.PhysicalNicHintInfo
	for _, nic := range s.NetworkInfo.Pnic {
		info = append(info, types.PhysicalNicHintInfo{Device: nic.Device})
	}
	return &methods.QueryNetworkHintBody{Res: &types.QueryNetworkHintResponse{Returnval: info}}
}

// VirtualNicManager implements HostVirtualNicManager (service tags on vmk NICs).
type VirtualNicManager struct {
	mo.HostVirtualNicManager
	w        *Host
	selected map[string][]string
}

var vnicTypes = []string{"faultToleranceLogging", "management", "vmotion", "vSphereProvisioning",
	"vSphereReplication", "vSphereReplicationNFC", "vsan", "vsanWitness"}

func (m *VirtualNicManager) refresh() {
	if m.selected == nil {
		m.selected = map[string][]string{"management": {"vmk0"}}
	}
	info := types.HostVirtualNicManagerInfo{}
	for _, t := range vnicTypes {
		nc := types.VirtualNicManagerNetConfig{NicType: t, MultiSelectAllowed: t != "vmotion" || true}
		for _, v := range m.w.netsys.NetworkInfo.Vnic {
			c := v
			c.Key = t + "." + v.Key
			nc.CandidateVnic = append(nc.CandidateVnic, c)
		}
		for _, d := range m.selected[t] {
			nc.SelectedVnic = append(nc.SelectedVnic, t+".key-vim.host.VirtualNic-"+d)
		}
		info.NetConfig = append(info.NetConfig, nc)
	}
	m.Info = info
	m.w.host.Config.VirtualNicManagerInfo = &m.Info
}

func (m *VirtualNicManager) deselectAll(dev string) {
	for t, l := range m.selected {
		m.selected[t] = removeString(l, dev)
	}
}

func removeString(l []string, s string) []string {
	out := l[:0]
	for _, x := range l {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

func (m *VirtualNicManager) checkArgs(nicType, dev string) *soap.Fault {
	ok := false
	for _, t := range vnicTypes {
		ok = ok || t == nicType
	}
	if !ok {
		return fault("unknown NIC type "+nicType, &types.InvalidArgument{InvalidProperty: "nicType"})
	}
	if m.w.netsys.findVnic(dev) == nil {
		return fault("VMkernel NIC "+dev+" not found", &types.NotFound{})
	}
	return nil
}

func (m *VirtualNicManager) SelectVnicForNicType(ctx *simulator.Context, c *types.SelectVnicForNicType) soap.HasFault {
	r := &methods.SelectVnicForNicTypeBody{}
	if f := m.checkArgs(c.NicType, c.Device); f != nil {
		r.Fault_ = f
		return r
	}
	l := removeString(m.selected[c.NicType], c.Device)
	m.selected[c.NicType] = append(l, c.Device)
	sort.Strings(m.selected[c.NicType])
	m.refresh()
	r.Res = &types.SelectVnicForNicTypeResponse{}
	return r
}

func (m *VirtualNicManager) DeselectVnicForNicType(ctx *simulator.Context, c *types.DeselectVnicForNicType) soap.HasFault {
	r := &methods.DeselectVnicForNicTypeBody{}
	if f := m.checkArgs(c.NicType, c.Device); f != nil {
		r.Fault_ = f
		return r
	}
	m.selected[c.NicType] = removeString(m.selected[c.NicType], c.Device)
	m.refresh()
	r.Res = &types.DeselectVnicForNicTypeResponse{}
	return r
}

func (m *VirtualNicManager) QueryNetConfig(ctx *simulator.Context, c *types.QueryNetConfig) soap.HasFault {
	r := &methods.QueryNetConfigBody{}
	for i := range m.Info.NetConfig {
		if m.Info.NetConfig[i].NicType == c.NicType {
			nc := m.Info.NetConfig[i]
			r.Res = &types.QueryNetConfigResponse{Returnval: &nc}
			return r
		}
	}
	r.Fault_ = fault("unknown NIC type "+c.NicType, &types.InvalidArgument{InvalidProperty: "nicType"})
	return r
}

// faultText returns the esxsim message attached with withMsg, or the fault type.
func faultText(f types.BaseMethodFault) string {
	for _, m := range f.GetMethodFault().FaultMessage {
		if m.Key == "esxsim" {
			return m.Message
		}
	}
	return fmt.Sprintf("%T", f)
}
