package main

import (
	"fmt"
	"log"
	"reflect"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Host is one simulated ESXi host and everything esxsim adds to it: its own
// network, storage, datastore and iSCSI systems, LUNs, mounted volumes and VM state.
// Standalone mode serves one Host; vCenter mode (sim.go) instantiates one per
// cluster member, all sharing the simulator's registry, datacenter and SOAP front end.
type Host struct {
	cfg Config // per host: Hostname and IQN are this host's
	sim *Sim
	svc *simulator.Service

	host *simulator.HostSystem
	dc   *simulator.Datacenter
	// idSuffix keeps the ids of esxsim's own per-host objects (vnic manager, iSCSI
	// manager) unique when several hosts share one registry; empty when standalone,
	// so the standalone ids stay those of real ESXi ("ha-vnic-mgr").
	idSuffix string

	netsys  *NetworkSystem
	storage *StorageSystem
	dss     *DatastoreSystem
	iscsi   *IscsiManager
	vnicMgr *VirtualNicManager

	intercept map[string]Interceptor

	// mu guards the esxsim state below (not the simulator objects, which the
	// simulator locks per object).
	mu      sync.Mutex
	luns    map[string]*Lun     // canonical name -> LUN
	volumes map[string]*Volume  // VMFS uuid -> mounted volume
	vmState map[string]*vmExtra // VM moref value -> esxsim VM state
	events  []string
}

// NewHost installs esxsim's objects on the simulator HostSystem hs.
func NewHost(sim *Sim, cfg Config, hs *simulator.HostSystem, idSuffix string) *Host {
	w := &Host{
		cfg:       cfg,
		sim:       sim,
		svc:       sim.svc,
		host:      hs,
		dc:        sim.dc,
		idSuffix:  idSuffix,
		intercept: map[string]Interceptor{},
		luns:      map[string]*Lun{},
		volumes:   map[string]*Volume{},
		vmState:   map[string]*vmExtra{},
	}
	h := w.host
	h.Name = cfg.Hostname
	h.Summary.Config.Name = cfg.Hostname
	if cr, ok := simulator.Map.Get(*h.Parent).(*mo.ComputeResource); ok {
		cr.Name = cfg.Hostname // standalone: the compute resource carries the host's name
	}
	h.Summary.Hardware.Uuid = uuidFromName(cfg.Hostname)
	h.Hardware.SystemInfo.Uuid = h.Summary.Hardware.Uuid
	h.Summary.OverallStatus = types.ManagedEntityStatusGreen
	h.Runtime.ConnectionState = types.HostSystemConnectionStateConnected

	w.setupNetwork()
	w.setupStorage()
	w.setupVMs()
	w.setupRename()
	w.setupBrowser()
	w.setupGuest() // after setupVMs: it wraps PowerOnVM_Task
	w.fixConfigManager()
	return w
}

// computeResource is the host's parent as a ComputeResource, whether it is a
// standalone host's ComputeResource or a ClusterComputeResource.
func computeResource(h *simulator.HostSystem) *mo.ComputeResource {
	switch p := simulator.Map.Get(*h.Parent).(type) {
	case *mo.ComputeResource:
		return p
	case *simulator.ClusterComputeResource:
		return &p.ComputeResource
	}
	return nil
}

// addRef appends ref to list unless it is there already (shared datastores and
// networks are reached from several hosts).
func addRef(list *[]types.ManagedObjectReference, ref types.ManagedObjectReference) {
	for _, r := range *list {
		if r == ref {
			return
		}
	}
	*list = append(*list, ref)
}

// fixConfigManager clears configManager references to objects that do not exist
// (the 0.24 ESX template points at vsanSystem and many more).
func (w *Host) fixConfigManager() {
	cm := reflect.ValueOf(&w.host.ConfigManager).Elem()
	refType := reflect.TypeOf((*types.ManagedObjectReference)(nil))
	for i := 0; i < cm.NumField(); i++ {
		f := cm.Field(i)
		if f.Type() != refType || f.IsNil() {
			continue
		}
		ref := f.Interface().(*types.ManagedObjectReference)
		if simulator.Map.Get(*ref) == nil {
			f.Set(reflect.Zero(refType))
		}
	}
}

// Close syncs everything to the LUNs and releases mount registrations.
func (w *Host) Close() {
	w.SyncAll()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, v := range w.volumes {
		w.unregisterMount(v)
	}
}

// postEvent records a host event (visible through the EventManager) and logs it.
func (w *Host) postEvent(msg string, warning bool) {
	log.Print(msg)
	w.mu.Lock()
	w.events = append(w.events, msg)
	w.mu.Unlock()
	ctx := internalCtx(simulator.Map.EventManager().Reference())
	ev := types.HostEvent{Event: types.Event{
		CreatedTime:          time.Now(),
		UserName:             "root",
		Host:                 &types.HostEventArgument{Host: w.host.Self, EntityEventArgument: types.EntityEventArgument{Name: w.host.Name}},
		FullFormattedMessage: msg,
	}}
	var e types.BaseEvent
	if warning {
		e = &types.GeneralHostWarningEvent{GeneralEvent: types.GeneralEvent{Event: ev.Event, Message: msg}}
	} else {
		e = &types.GeneralHostInfoEvent{GeneralEvent: types.GeneralEvent{Event: ev.Event, Message: msg}}
	}
	em := simulator.Map.EventManager()
	simulator.Map.WithLock(em, func() {
		em.PostEvent(ctx, &types.PostEvent{EventToPost: e})
	})
}

func uuidFromName(name string) string {
	return newUUIDFrom([]byte("esxsim-host-" + name))
}

func newUUIDFrom(seed []byte) string {
	h := sha1Sum(seed)
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// putChild adds an entity under a folder (the simulator's folderPutChild is private).
func putChild(folderRef types.ManagedObjectReference, e mo.Entity) {
	f := simulator.Map.Get(folderRef).(*simulator.Folder)
	simulator.Map.WithLock(f, func() {
		f.ChildEntity = append(f.ChildEntity, e.Reference())
		simulator.Map.PutEntity(f, e)
	})
}

// removeChild removes an entity from a folder and from the registry.
func removeChild(folderRef types.ManagedObjectReference, ref types.ManagedObjectReference) {
	f := simulator.Map.Get(folderRef).(*simulator.Folder)
	simulator.Map.WithLock(f, func() {
		simulator.RemoveReference(&f.ChildEntity, ref)
	})
	simulator.Map.Remove(ref)
}
