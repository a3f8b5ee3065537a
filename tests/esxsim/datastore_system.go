package main

import (
	"fmt"
	"sort"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// DatastoreSystem replaces the simulator's HostDatastoreSystem for VMFS.
type DatastoreSystem struct {
	simulator.HostDatastoreSystem
	w *Host
}

func (d *DatastoreSystem) QueryUnresolvedVmfsVolumes(ctx *simulator.Context, _ *types.QueryUnresolvedVmfsVolumes) soap.HasFault {
	return &methods.QueryUnresolvedVmfsVolumesBody{Res: &types.QueryUnresolvedVmfsVolumesResponse{Returnval: d.w.unresolvedVolumes()}}
}

func (d *DatastoreSystem) ResignatureUnresolvedVmfsVolumeTask(ctx *simulator.Context, c *types.ResignatureUnresolvedVmfsVolume_Task) soap.HasFault {
	w := d.w
	task := simulator.CreateTask(w.host, "resignatureUnresolvedVmfsVolume", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		luns, f := w.lunsForPaths(c.ResolutionSpec.ExtentDevicePath)
		if f != nil {
			return nil, f
		}
		l := luns[0]
		if l.Vmfs.MatchesLun(l.NAA, l.Ident.Product) {
			return nil, withMsg(&types.InvalidArgument{InvalidProperty: "resolutionSpec.extentDevicePath"},
				"VMFS volume on "+l.Canonical+" is not a snapshot (its device id matches the LUN)")
		}
		v, f := w.resignature(l)
		if f != nil {
			return nil, f
		}
		return types.HostResignatureRescanResult{
			Rescan: []types.HostVmfsRescanResult{{Host: w.host.Self}},
			Result: v.DS.Self,
		}, nil
	})
	return &methods.ResignatureUnresolvedVmfsVolume_TaskBody{Res: &types.ResignatureUnresolvedVmfsVolume_TaskResponse{Returnval: runTask(task)}}
}

// runTask runs a task and puts the esxsim message into info.error.localizedMessage.
func runTask(t *simulator.Task) types.ManagedObjectReference {
	ref := t.Run()
	if t.Info.Error != nil && t.Info.Error.Fault != nil {
		msg := faultText(t.Info.Error.Fault)
		simulator.Map.Update(t, []types.PropertyChange{{Name: "info.error", Val: types.LocalizedMethodFault{Fault: t.Info.Error.Fault, LocalizedMessage: msg}}})
	}
	return ref
}

func (d *DatastoreSystem) availableLuns() []*Lun {
	w := d.w
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*Lun
	for _, l := range w.luns {
		if l.Vmfs != nil {
			if v, ok := w.volumes[l.Vmfs.UUIDString()]; ok && v.Lun.Canonical == l.Canonical {
				continue
			}
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Canonical < out[j].Canonical })
	return out
}

func (d *DatastoreSystem) QueryAvailableDisksForVmfs(ctx *simulator.Context, c *types.QueryAvailableDisksForVmfs) soap.HasFault {
	var out []types.HostScsiDisk
	for _, l := range d.availableLuns() {
		for _, sl := range d.w.storage.StorageDeviceInfo.ScsiLun {
			if disk, ok := sl.(*types.HostScsiDisk); ok && disk.CanonicalName == l.Canonical {
				out = append(out, *disk)
			}
		}
	}
	return &methods.QueryAvailableDisksForVmfsBody{Res: &types.QueryAvailableDisksForVmfsResponse{Returnval: out}}
}

func (d *DatastoreSystem) QueryVmfsDatastoreCreateOptions(ctx *simulator.Context, c *types.QueryVmfsDatastoreCreateOptions) soap.HasFault {
	r := &methods.QueryVmfsDatastoreCreateOptionsBody{}
	l := d.w.lunByPath(c.DevicePath)
	if l == nil {
		r.Fault_ = fault("device "+c.DevicePath+" not found", &types.NotFound{})
		return r
	}
	major := c.VmfsMajorVersion
	if major == 0 {
		major = 6
	}
	bs := int64(l.Ident.BlockSize)
	total := int64(l.Ident.Blocks)
	start, end := int64(gptPartLBA), total-34
	layout := types.HostDiskPartitionLayout{
		Total: &types.HostDiskDimensionsLba{BlockSize: int32(bs), Block: total},
		Partition: []types.HostDiskPartitionBlockRange{{
			Partition: 1, Type: "vmfs",
			Start: types.HostDiskDimensionsLba{BlockSize: int32(bs), Block: start},
			End:   types.HostDiskDimensionsLba{BlockSize: int32(bs), Block: end},
		}},
	}
	spec := &types.VmfsDatastoreCreateSpec{
		Partition: types.HostDiskPartitionSpec{
			PartitionFormat: "gpt", TotalSectors: total,
			Partition: []types.HostDiskPartitionAttributes{{
				Partition: 1, StartSector: start, EndSector: end, Type: "AA31E02A400F11DB9590000C2911D1B8",
			}},
		},
		Vmfs: types.HostVmfsSpec{
			Extent:       types.HostScsiDiskPartition{DiskName: l.Canonical, Partition: 1},
			MajorVersion: major, BlockSizeMb: 1,
		},
	}
	opt := types.VmfsDatastoreOption{
		Info: &types.VmfsDatastoreAllExtentOption{VmfsDatastoreSingleExtentOption: types.VmfsDatastoreSingleExtentOption{
			VmfsDatastoreBaseOption: types.VmfsDatastoreBaseOption{Layout: layout, PartitionFormatChange: types.NewBool(l.Vmfs == nil)},
			VmfsExtent:              types.HostDiskPartitionBlockRange{Partition: 1, Type: "vmfs", Start: layout.Partition[0].Start, End: layout.Partition[0].End},
		}},
		Spec: spec,
	}
	r.Res = &types.QueryVmfsDatastoreCreateOptionsResponse{Returnval: []types.VmfsDatastoreOption{opt}}
	return r
}

func (d *DatastoreSystem) CreateVmfsDatastore(ctx *simulator.Context, c *types.CreateVmfsDatastore) soap.HasFault {
	r := &methods.CreateVmfsDatastoreBody{}
	name := c.Spec.Vmfs.VolumeName
	if name == "" {
		r.Fault_ = fault("volume name is empty", &types.InvalidArgument{InvalidProperty: "spec.vmfs.volumeName"})
		return r
	}
	if e := simulator.Map.FindByName(name, d.w.dc.Datastore); e != nil {
		r.Fault_ = fault("a datastore named "+name+" already exists", &types.DuplicateName{Name: name, Object: e.Reference()})
		return r
	}
	l := d.w.lunByPath(c.Spec.Vmfs.Extent.DiskName)
	if l == nil {
		r.Fault_ = fault("device "+c.Spec.Vmfs.Extent.DiskName+" not found", &types.NotFound{})
		return r
	}
	major := c.Spec.Vmfs.MajorVersion
	if major == 0 {
		major = 6
	}
	if major != 5 && major != 6 {
		r.Fault_ = fault(fmt.Sprintf("VMFS major version %d not supported", major), &types.InvalidArgument{InvalidProperty: "spec.vmfs.majorVersion"})
		return r
	}
	v, f := d.w.createVmfs(l, name, major)
	if f != nil {
		r.Fault_ = fault(faultText(f), f)
		return r
	}
	r.Res = &types.CreateVmfsDatastoreResponse{Returnval: v.DS.Self}
	return r
}

// RemoveDatastore unmounts a VMFS datastore (the data stays on the LUN).
func (d *DatastoreSystem) RemoveDatastore(ctx *simulator.Context, c *types.RemoveDatastore) soap.HasFault {
	r := &methods.RemoveDatastoreBody{}
	d.w.mu.Lock()
	var vol *Volume
	for _, v := range d.w.volumes {
		if v.DS.Self == c.Datastore {
			vol = v
		}
	}
	d.w.mu.Unlock()
	if vol == nil {
		r.Fault_ = fault("datastore "+c.Datastore.Value+" not found", &types.NotFound{})
		return r
	}
	if f := d.w.unmountVolume(vol.UUID, false, false); f != nil {
		r.Fault_ = fault(faultText(f), f)
		return r
	}
	r.Res = &types.RemoveDatastoreResponse{}
	return r
}

// IscsiManager implements port binding of VMkernel NICs to the software iSCSI adapter.
type IscsiManager struct {
	mo.IscsiManager
	w     *Host
	bound map[string]bool
}

func (m *IscsiManager) isBound(dev string) bool { return m.bound[dev] }

func (m *IscsiManager) checkHba(name string) *soap.Fault {
	if m.w.storage.hba == nil || m.w.storage.hba.Device != name {
		return fault("iSCSI adapter "+name+" not found", &types.NotFound{})
	}
	return nil
}

func (m *IscsiManager) portInfo(v types.HostVirtualNic) types.IscsiPortInfo {
	ns := m.w.netsys
	pi := types.IscsiPortInfo{VnicDevice: v.Device, PortgroupName: v.Portgroup, PortgroupKey: pgKeyPrefix + v.Portgroup, PathStatus: "notUsed"}
	vc := v
	pi.Vnic = &vc
	if pg := ns.findPortGroup(v.Portgroup); pg != nil {
		pi.SwitchName = pg.Spec.VswitchName
		act, _, _ := ns.PortGroupActiveUplinks(v.Portgroup)
		if len(act) == 1 {
			pi.PnicDevice = act[0]
			for _, p := range ns.NetworkInfo.Pnic {
				if p.Device == act[0] {
					pc := p
					pi.Pnic = &pc
				}
			}
		}
	}
	if reason := m.bindProblem(v.Device); reason != nil {
		pi.ComplianceStatus = &types.IscsiStatus{Reason: []types.LocalizedMethodFault{{Fault: reason, LocalizedMessage: faultText(reason)}}}
	} else {
		pi.ComplianceStatus = &types.IscsiStatus{}
	}
	if m.bound[v.Device] {
		pi.PathStatus = "active"
	}
	return pi
}

// bindProblem explains why a vmk cannot be bound (nil when it can).
func (m *IscsiManager) bindProblem(dev string) types.BaseMethodFault {
	ns := m.w.netsys
	v := ns.findVnic(dev)
	if v == nil {
		return withMsg(&types.IscsiFaultVnicNotFound{VnicDevice: dev}, "VMkernel NIC "+dev+" not found")
	}
	act, standby, ok := ns.PortGroupActiveUplinks(v.Portgroup)
	if !ok {
		return withMsg(&types.IscsiFaultInvalidVnic{VnicDevice: dev}, "port group "+v.Portgroup+" of "+dev+" not found")
	}
	if len(act) == 0 {
		return withMsg(&types.IscsiFaultVnicHasNoUplinks{VnicDevice: dev},
			fmt.Sprintf("cannot bind %s: port group %s has no active uplink; it needs exactly one active uplink and no standby uplinks", dev, v.Portgroup))
	}
	if len(act) != 1 || len(standby) != 0 {
		return withMsg(&types.IscsiFaultVnicHasMultipleUplinks{VnicDevice: dev},
			fmt.Sprintf("cannot bind %s: port group %s has %d active and %d standby uplinks; iSCSI port binding needs exactly one active uplink and no standby uplinks (override the failover order on the port group)", dev, v.Portgroup, len(act), len(standby)))
	}
	return nil
}

func (m *IscsiManager) QueryCandidateNics(ctx *simulator.Context, c *types.QueryCandidateNics) soap.HasFault {
	r := &methods.QueryCandidateNicsBody{}
	if f := m.checkHba(c.IScsiHbaName); f != nil {
		r.Fault_ = f
		return r
	}
	var out []types.IscsiPortInfo
	for _, v := range m.w.netsys.NetworkInfo.Vnic {
		if !m.bound[v.Device] {
			out = append(out, m.portInfo(v))
		}
	}
	r.Res = &types.QueryCandidateNicsResponse{Returnval: out}
	return r
}

func (m *IscsiManager) QueryBoundVnics(ctx *simulator.Context, c *types.QueryBoundVnics) soap.HasFault {
	r := &methods.QueryBoundVnicsBody{}
	if f := m.checkHba(c.IScsiHbaName); f != nil {
		r.Fault_ = f
		return r
	}
	var out []types.IscsiPortInfo
	for _, v := range m.w.netsys.NetworkInfo.Vnic {
		if m.bound[v.Device] {
			out = append(out, m.portInfo(v))
		}
	}
	r.Res = &types.QueryBoundVnicsResponse{Returnval: out}
	return r
}

func (m *IscsiManager) BindVnic(ctx *simulator.Context, c *types.BindVnic) soap.HasFault {
	r := &methods.BindVnicBody{}
	if f := m.checkHba(c.IScsiHbaName); f != nil {
		r.Fault_ = f
		return r
	}
	if m.bound[c.VnicDevice] {
		r.Fault_ = fault(c.VnicDevice+" is already bound to "+c.IScsiHbaName, &types.IscsiFaultVnicAlreadyBound{VnicDevice: c.VnicDevice})
		return r
	}
	if p := m.bindProblem(c.VnicDevice); p != nil {
		r.Fault_ = fault(faultText(p), p)
		return r
	}
	m.bound[c.VnicDevice] = true
	r.Res = &types.BindVnicResponse{}
	return r
}

func (m *IscsiManager) UnbindVnic(ctx *simulator.Context, c *types.UnbindVnic) soap.HasFault {
	r := &methods.UnbindVnicBody{}
	if f := m.checkHba(c.IScsiHbaName); f != nil {
		r.Fault_ = f
		return r
	}
	if !m.bound[c.VnicDevice] {
		r.Fault_ = fault(c.VnicDevice+" is not bound to "+c.IScsiHbaName, &types.IscsiFaultVnicNotBound{VnicDevice: c.VnicDevice})
		return r
	}
	delete(m.bound, c.VnicDevice)
	r.Res = &types.UnbindVnicResponse{}
	return r
}

func (m *IscsiManager) QueryPnicStatus(ctx *simulator.Context, c *types.QueryPnicStatus) soap.HasFault {
	return &methods.QueryPnicStatusBody{Res: &types.QueryPnicStatusResponse{Returnval: types.IscsiStatus{}}}
}

func (m *IscsiManager) QueryVnicStatus(ctx *simulator.Context, c *types.QueryVnicStatus) soap.HasFault {
	r := &methods.QueryVnicStatusBody{}
	st := types.IscsiStatus{}
	if p := m.bindProblem(c.VnicDevice); p != nil {
		st.Reason = []types.LocalizedMethodFault{{Fault: p, LocalizedMessage: faultText(p)}}
	}
	r.Res = &types.QueryVnicStatusResponse{Returnval: st}
	return r
}
