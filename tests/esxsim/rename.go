package main

// Datastore rename (RenameDatastore and Rename_Task on a Datastore): the 0.24 simulator
// implements neither. ESXi writes the new name into the volume's label, so after a
// resignature ("snap-1a2b3c4d-prod-ds1") esxdr can give the datastore its expected
// name back and the name survives rescans and restarts.

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func (w *Host) setupRename() {
	w.intercept["Datastore.RenameDatastore"] = func(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
		req := m.Body.(*types.RenameDatastore)
		if f := w.renameVolume(m.This, req.NewName); f != nil {
			return &methods.RenameDatastoreBody{Fault_: simulator.Fault(faultText(f), f)}
		}
		return &methods.RenameDatastoreBody{Res: &types.RenameDatastoreResponse{}}
	}
	w.intercept["Datastore.Rename_Task"] = func(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
		req := m.Body.(*types.Rename_Task)
		this := m.This
		task := simulator.CreateTask(w.host, "rename", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
			return nil, w.renameVolume(this, req.NewName)
		})
		return &methods.Rename_TaskBody{Res: &types.Rename_TaskResponse{Returnval: runTask(task)}}
	}
}

func (w *Host) renameVolume(ref types.ManagedObjectReference, name string) types.BaseMethodFault {
	if name == "" || len(name) > 127 {
		return withMsg(&types.InvalidName{Name: name}, "a datastore name has 1 to 127 characters")
	}
	w.mu.Lock()
	v := w.volumes[ref.Value]
	var clash bool
	for _, o := range w.volumes {
		if o != v && o.Label == name {
			clash = true
		}
	}
	w.mu.Unlock()
	if v == nil {
		return withMsg(&types.NotFound{}, "datastore "+ref.Value+" is not mounted on "+w.cfg.Hostname)
	}
	if clash {
		return withMsg(&types.DuplicateName{Name: name, Object: ref}, "another datastore on "+w.cfg.Hostname+" is named "+name)
	}
	if !v.ForceMounted { // a force mount promises not to write to the LUN
		info := *v.Lun.Vmfs
		info.Label = name
		d, err := w.openLun(v.Lun)
		if err != nil {
			return withMsg(&types.HostConfigFault{}, "cannot open LUN "+v.Lun.Canonical+": "+err.Error())
		}
		err = WriteHeaders(d, &info)
		d.s.Close()
		if err != nil {
			return withMsg(&types.HostConfigFault{}, "writing the VMFS label to "+v.Lun.Canonical+": "+err.Error())
		}
		w.mu.Lock()
		v.Lun.Vmfs = &info
		w.mu.Unlock()
	}
	w.mu.Lock()
	v.Label = name
	v.Info.Label = name
	w.mu.Unlock()
	ds := v.DS
	changes := []types.PropertyChange{{Name: "name", Val: name}, {Name: "summary.name", Val: name}}
	if info, ok := ds.Info.(*types.VmfsDatastoreInfo); ok {
		info.Name = name
		if info.Vmfs != nil {
			info.Vmfs.Name = name
		}
		changes = append(changes, types.PropertyChange{Name: "info", Val: info})
	}
	ds.Name = name
	ds.Summary.Name = name
	simulator.Map.Update(ds, changes)
	w.postEvent("datastore "+ref.Value+" renamed to "+name, false)
	return nil
}
