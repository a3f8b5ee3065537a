package main

// The simulated endpoint: one standalone ESXi host (the default), or a vCenter
// (-vcenter -hosts a,b,...) with a Datacenter, one ClusterComputeResource and one
// HostSystem per name. Every host is a *Host built by the same NewHost, so a
// vCenter's hosts behave exactly like the standalone one (own network, storage,
// iSCSI initiator and IQN, LUNs and volumes). The simulator's registry, the SOAP
// front end and the datacenter are shared; calls that concern one host (a VM's
// power-on, a datastore rename) are routed to it here.

import (
	"net/http"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Sim is what one esxsim process serves.
type Sim struct {
	cfg     Config
	model   *simulator.Model
	svc     *simulator.Service
	dc      *simulator.Datacenter
	vcenter bool
	cluster *simulator.ClusterComputeResource // vCenter mode only
	hosts   []*Host
	byRef   map[string]*Host // HostSystem moref value -> host
}

// NewSim creates the simulator model and installs esxsim's hosts on it.
func NewSim(cfg Config) (*Sim, error) {
	var m *simulator.Model
	if cfg.VCenter {
		m = simulator.VPX()
		m.Datacenter = 1
		m.Cluster = 1
		m.ClusterHost = 0 // esxsim adds its own hosts below, named by -hosts
		m.Host = 0
		m.Portgroup = 0
		m.Pool = 0
	} else {
		m = simulator.ESX()
	}
	m.Datastore = 0
	m.Machine = 0
	m.Autostart = false
	if err := m.Create(); err != nil {
		return nil, err
	}
	// A rescan is synchronous on a real host: the call is answered when the scan is over.
	// The simulator's own per-method delay holds the call before the handler runs, outside
	// the storage system's lock, so property reads and waits go on meanwhile, as on a host.
	if ms := int(cfg.RescanDelay / time.Millisecond); ms > 0 {
		m.DelayConfig.MethodDelay = map[string]int{"RescanAllHba": ms, "RescanHba": ms}
	}
	s := &Sim{cfg: cfg, model: m, svc: m.Service, vcenter: cfg.VCenter, byRef: map[string]*Host{}}
	s.dc = simulator.Map.Any("Datacenter").(*simulator.Datacenter)
	if !cfg.VCenter {
		hs := simulator.Map.Get(esx.HostSystem.Reference()).(*simulator.HostSystem)
		s.add(NewHost(s, cfg, hs, ""))
		return s, nil
	}
	s.cluster = simulator.Map.Any("ClusterComputeResource").(*simulator.ClusterComputeResource)
	s.cluster.Name = cfg.Cluster
	if ex, ok := s.cluster.ConfigurationEx.(*types.ClusterConfigInfoEx); ok {
		ex.DrsConfig.Enabled = types.NewBool(cfg.DRS)
	}
	for _, name := range cfg.Hosts {
		hcfg := cfg
		hcfg.Hostname = name
		hcfg.IQN = "iqn.1998-01.com.vmware:" + name
		hs := s.addClusterHost(name)
		s.add(NewHost(s, hcfg, hs, "-"+hs.Self.Value))
	}
	return s, nil
}

func (s *Sim) add(h *Host) {
	s.hosts = append(s.hosts, h)
	s.byRef[h.host.Self.Value] = h
}

// addClusterHost creates a connected HostSystem in the cluster. NewHostSystem gives
// it its own network, storage, datastore and firewall systems (fresh references).
func (s *Sim) addClusterHost(name string) *simulator.HostSystem {
	hs := simulator.NewHostSystem(esx.HostSystem)
	hs.Name = name
	hs.Summary.Config.Name = name
	cr := s.cluster
	simulator.Map.PutEntity(cr, simulator.Map.NewEntity(hs))
	hs.Summary.Host = &hs.Self
	cr.Host = append(cr.Host, hs.Reference())
	hs.Network = nil // port groups add their networks (network.go)
	sum := cr.Summary.GetComputeResourceSummary()
	sum.TotalCpu += hs.Summary.Hardware.CpuMhz
	sum.TotalMemory += hs.Summary.Hardware.MemorySize
	sum.NumCpuCores += hs.Summary.Hardware.NumCpuCores
	sum.NumCpuThreads += hs.Summary.Hardware.NumCpuThreads
	sum.EffectiveCpu += hs.Summary.Hardware.CpuMhz
	sum.EffectiveMemory += hs.Summary.Hardware.MemorySize
	sum.NumHosts++
	sum.NumEffectiveHosts++
	sum.OverallStatus = types.ManagedEntityStatusGreen
	return hs
}

// SyncAll writes every host's changed datastore directories to their LUNs.
func (s *Sim) SyncAll() {
	for _, h := range s.hosts {
		h.SyncAll()
	}
}

// Close syncs and releases every host's mounts.
func (s *Sim) Close() {
	for _, h := range s.hosts {
		h.Close()
	}
}

// vmHost is the host a VM runs on (runtime.host), or nil.
func (s *Sim) vmHost(ref types.ManagedObjectReference) *Host {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok || vm.Runtime.Host == nil {
		return nil
	}
	return s.byRef[vm.Runtime.Host.Value]
}

// hostFor picks the host a SOAP call concerns: the VM's host (for VirtualMachine
// methods and guest operations, which name the VM in the body), a host that mounts
// the datastore, the host named in CreateVM_Task; the only host when standalone.
func (s *Sim) hostFor(m *simulator.Method) *Host {
	if len(s.hosts) == 1 {
		return s.hosts[0]
	}
	switch m.This.Type {
	case "HostSystem":
		if h := s.byRef[m.This.Value]; h != nil {
			return h
		}
	case "VirtualMachine":
		if h := s.vmHost(m.This); h != nil {
			return h
		}
	case "Datastore":
		for _, h := range s.hosts {
			h.mu.Lock()
			_, ok := h.volumes[m.This.Value]
			h.mu.Unlock()
			if ok {
				return h
			}
		}
	}
	body := reflect.ValueOf(m.Body)
	if body.Kind() == reflect.Ptr && body.Elem().Kind() == reflect.Struct {
		if f := body.Elem().FieldByName("Vm"); f.IsValid() {
			if ref, ok := f.Interface().(types.ManagedObjectReference); ok {
				if h := s.vmHost(ref); h != nil {
					return h
				}
			}
		}
		if f := body.Elem().FieldByName("Host"); f.IsValid() {
			if ref, ok := f.Interface().(*types.ManagedObjectReference); ok && ref != nil {
				if h := s.byRef[ref.Value]; h != nil {
					return h
				}
			}
		}
	}
	return s.hosts[0]
}

// registerVM is Folder.RegisterVM_Task under vCenter: the VM goes to the host given,
// else (pool only) DRS places it on the least-loaded connected host that mounts its
// datastore; with DRS off and no host, vCenter refuses, and so does esxsim.
func (s *Sim) registerVM(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	req := m.Body.(*types.RegisterVM_Task)
	refuse := func(msg, prop string) soap.HasFault {
		f := withMsg(&types.InvalidArgument{InvalidProperty: prop}, msg)
		return &registerBody{Res: &types.RegisterVM_TaskResponse{Returnval: taskFault(m.This, "registerVm", f)}}
	}
	pool := s.cluster.ResourcePool
	if req.Pool != nil && *req.Pool != *pool {
		return refuse("resource pool "+req.Pool.Value+" is not the pool of cluster "+s.cluster.Name, "pool")
	}
	var target *Host
	if req.Host != nil {
		target = s.byRef[req.Host.Value]
		if target == nil {
			return refuse("host "+req.Host.Value+" is not a member of cluster "+s.cluster.Name, "host")
		}
	} else {
		drs := false
		if ex, ok := s.cluster.ConfigurationEx.(*types.ClusterConfigInfoEx); ok && ex.DrsConfig.Enabled != nil {
			drs = *ex.DrsConfig.Enabled
		}
		if !drs {
			return refuse("DRS is disabled on cluster "+s.cluster.Name+": name the host to register "+req.Path+" on", "host")
		}
		target = s.leastLoaded(req.Path)
		if target == nil {
			return refuse("no connected host of cluster "+s.cluster.Name+" mounts the datastore of "+req.Path, "host")
		}
		ref := target.host.Self
		req.Host = &ref
	}
	req.Pool = pool
	return target.registerVM(ctx, m)
}

// registerBody is methods.RegisterVM_TaskBody without importing methods here.
type registerBody struct {
	Res    *types.RegisterVM_TaskResponse `xml:"RegisterVM_TaskResponse,omitempty"`
	Fault_ *soap.Fault                    `xml:"http://schemas.xmlsoap.org/soap/envelope/ Fault,omitempty"`
}

func (b *registerBody) Fault() *soap.Fault { return b.Fault_ }

// leastLoaded is the connected host with the fewest VMs among those that mount the
// datastore of dsPath (every connected host when the path names no datastore); ties
// go to the first by name, so placement is deterministic.
func (s *Sim) leastLoaded(dsPath string) *Host {
	var p object.DatastorePath
	p.FromString(dsPath)
	hosts := append([]*Host(nil), s.hosts...)
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].cfg.Hostname < hosts[j].cfg.Hostname })
	var best *Host
	for _, h := range hosts {
		if h.host.Runtime.ConnectionState != types.HostSystemConnectionStateConnected {
			continue
		}
		if p.Datastore != "" && simulator.Map.FindByName(p.Datastore, h.host.Datastore) == nil {
			continue
		}
		if best == nil || len(h.host.Vm) < len(best.host.Vm) {
			best = h
		}
	}
	return best
}

// guestHandlers serves the guest file transfers and the small admin endpoints,
// each on the host of the VM concerned.
func (s *Sim) guestHandlers(mux *http.ServeMux) {
	byName := func(r *http.Request) *Host {
		if vm := findVMByName(r.URL.Query().Get("vm")); vm != nil {
			if h := s.vmHost(vm.Self); h != nil {
				return h
			}
		}
		return s.hosts[0]
	}
	mux.HandleFunc("/guestFile", func(rw http.ResponseWriter, r *http.Request) {
		h := s.hosts[0]
		guestMu.Lock()
		t, ok := transfers[r.URL.Query().Get("id")]
		guestMu.Unlock()
		if ok {
			if vh := s.vmHost(t.vm); vh != nil {
				h = vh
			}
		}
		h.serveGuestFile(rw, r)
	})
	mux.HandleFunc("/esxsim/customization", func(rw http.ResponseWriter, r *http.Request) {
		byName(r).serveCustomization(rw, r)
	})
	mux.HandleFunc("/esxsim/guest", func(rw http.ResponseWriter, r *http.Request) {
		byName(r).serveGuestState(rw, r)
	})
}

// hostNames lists the hosts, for messages.
func (s *Sim) hostNames() string {
	names := make([]string, 0, len(s.hosts))
	for _, h := range s.hosts {
		names = append(names, h.cfg.Hostname)
	}
	return strings.Join(names, ", ")
}
