package main

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// startVC runs esxsim in vCenter mode in-process and logs in with govmomi.
func startVC(t *testing.T, drs bool) (*Server, *StartInfo, *govmomi.Client) {
	t.Helper()
	addr := freePort(t)
	cfg := Config{Listen: addr, Hostname: "vc-go", DataDir: t.TempDir(), Username: "root", Password: "pw",
		MountRegistry: t.TempDir(), VCenter: true, Hosts: []string{"esx-a", "esx-b", "esx-c"}, Cluster: "cl-go", DRS: drs}
	srv, info, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := soap.ParseURL(info.URL)
	u.User = url.UserPassword("root", "pw")
	c, err := govmomi.NewClient(context.Background(), u, true)
	if err != nil {
		srv.Shutdown()
		t.Fatal(err)
	}
	return srv, info, c
}

func TestVCenterModel(t *testing.T) {
	srv, info, c := startVC(t, true)
	defer srv.Shutdown()
	ctx := context.Background()
	if c.ServiceContent.About.ApiType != "VirtualCenter" || info.APIType != "VirtualCenter" {
		t.Fatalf("apiType %s / %s", c.ServiceContent.About.ApiType, info.APIType)
	}
	if len(info.Hosts) != 3 || info.Hosts[1].IQN != "iqn.1998-01.com.vmware:esx-b" {
		t.Fatalf("hosts %+v", info.Hosts)
	}
	m := view.NewManager(c.Client)
	v, err := m.CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{"HostSystem"}, true)
	if err != nil {
		t.Fatal(err)
	}
	var hosts []mo.HostSystem
	if err := v.Retrieve(ctx, []string{"HostSystem"}, []string{"name", "configManager", "parent", "runtime.connectionState"}, &hosts); err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 3 {
		t.Fatalf("%d hosts", len(hosts))
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		if h.Parent.Type != "ClusterComputeResource" || h.Runtime.ConnectionState != types.HostSystemConnectionStateConnected {
			t.Fatalf("%s: parent %v, %s", h.Name, h.Parent, h.Runtime.ConnectionState)
		}
		cm := h.ConfigManager
		for _, ref := range []*types.ManagedObjectReference{cm.NetworkSystem, cm.StorageSystem, cm.DatastoreSystem, cm.IscsiManager, cm.VirtualNicManager} {
			if ref == nil || seen[ref.Value] {
				t.Fatalf("%s: configManager object missing or shared: %v", h.Name, ref)
			}
			seen[ref.Value] = true
		}
	}
	var cl mo.ClusterComputeResource
	pc := property.DefaultCollector(c.Client)
	if err := pc.RetrieveOne(ctx, *hosts[0].Parent, []string{"name", "host", "resourcePool", "configurationEx"}, &cl); err != nil {
		t.Fatal(err)
	}
	ex := cl.ConfigurationEx.(*types.ClusterConfigInfoEx)
	if cl.Name != "cl-go" || len(cl.Host) != 3 || cl.ResourcePool == nil || ex.DrsConfig.Enabled == nil || !*ex.DrsConfig.Enabled {
		t.Fatalf("cluster %s hosts %d pool %v drs %v", cl.Name, len(cl.Host), cl.ResourcePool, ex.DrsConfig.Enabled)
	}

	// Each host has its own network: a vSwitch added on one is not on the other.
	byName := map[string]mo.HostSystem{}
	for _, h := range hosts {
		byName[h.Name] = h
	}
	nsA := object.NewHostNetworkSystem(c.Client, *byName["esx-a"].ConfigManager.NetworkSystem)
	spec := &types.HostVirtualSwitchSpec{NumPorts: 32, Bridge: &types.HostVirtualSwitchBondBridge{NicDevice: []string{"vmnic1"}}}
	if err := nsA.AddVirtualSwitch(ctx, "vSwitch1", spec); err != nil {
		t.Fatal(err)
	}
	nsB := object.NewHostNetworkSystem(c.Client, *byName["esx-b"].ConfigManager.NetworkSystem)
	if err := nsB.AddVirtualSwitch(ctx, "vSwitch1", spec); err != nil {
		t.Fatalf("esx-b must not see esx-a's vSwitch1: %v", err)
	}
	// The same port group name on two hosts is one Network entity listing both.
	for _, ns := range []*object.HostNetworkSystem{nsA, nsB} {
		if err := ns.AddPortGroup(ctx, types.HostPortGroupSpec{Name: "DR-LAN", VswitchName: "vSwitch1", VlanId: 10}); err != nil {
			t.Fatal(err)
		}
	}
	var net mo.Network
	if err := pc.RetrieveOne(ctx, types.ManagedObjectReference{Type: "Network", Value: "HaNetwork-DR-LAN"}, []string{"host"}, &net); err != nil {
		t.Fatal(err)
	}
	if len(net.Host) != 2 {
		t.Fatalf("DR-LAN hosts %v", net.Host)
	}
	if err := nsA.RemovePortGroup(ctx, "DR-LAN"); err != nil {
		t.Fatal(err)
	}
	if err := pc.RetrieveOne(ctx, net.Self, []string{"host"}, &net); err != nil || len(net.Host) != 1 {
		t.Fatalf("after removal on esx-a: %v %v", net.Host, err)
	}

	// Software iSCSI: each host's adapter carries its own IQN.
	for _, name := range []string{"esx-a", "esx-b"} {
		ss := object.NewHostStorageSystem(c.Client, *byName[name].ConfigManager.StorageSystem)
		req := types.UpdateSoftwareInternetScsiEnabled{This: ss.Reference(), Enabled: true}
		if _, err := methodsUpdateSoftwareIscsi(ctx, c, &req); err != nil {
			t.Fatal(err)
		}
		var h mo.HostSystem
		if err := pc.RetrieveOne(ctx, byName[name].Self, []string{"config.storageDevice"}, &h); err != nil {
			t.Fatal(err)
		}
		iqn := ""
		for _, a := range h.Config.StorageDevice.HostBusAdapter {
			if i, ok := a.(*types.HostInternetScsiHba); ok {
				iqn = i.IScsiName
			}
		}
		if iqn != "iqn.1998-01.com.vmware:"+name {
			t.Fatalf("%s: iqn %q", name, iqn)
		}
	}
}

func TestVCenterRegisterWithoutHostNeedsDRS(t *testing.T) {
	srv, _, c := startVC(t, false)
	defer srv.Shutdown()
	ctx := context.Background()
	dcs, err := object.NewRootFolder(c.Client).Children(ctx)
	if err != nil || len(dcs) != 1 {
		t.Fatal(err, dcs)
	}
	dc := object.NewDatacenter(c.Client, dcs[0].Reference())
	folders, err := dc.Folders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hf, _ := folders.HostFolder.Children(ctx)
	cluster := object.NewClusterComputeResource(c.Client, hf[0].Reference())
	pool, err := cluster.ResourcePool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	task, err := folders.VmFolder.RegisterVM(ctx, "[ds1] vm/vm.vmx", "vm", false, pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = task.Wait(ctx)
	if err == nil || !strings.Contains(err.Error(), "DRS is disabled on cluster cl-go") {
		t.Fatalf("want the DRS refusal, got %v", err)
	}
}

func methodsUpdateSoftwareIscsi(ctx context.Context, c *govmomi.Client, req *types.UpdateSoftwareInternetScsiEnabled) (*types.UpdateSoftwareInternetScsiEnabledResponse, error) {
	return methods.UpdateSoftwareInternetScsiEnabled(ctx, c.Client, req)
}

// Under vCenter the hosts of one process share one working copy per VMFS volume, as ESXi
// hosts share one file system. A second host that mounts the volume joins that copy: it
// neither reads the LUN again nor rewrites the files, so the first host's view of the
// datastore never loses a file while the second one mounts. (Before, the second mount
// emptied and reloaded the shared copy, and a datastore search by the first host in that
// window found no VMs.) The LUN's portal here accepts no login: a reload would fail.
func TestSecondHostJoinsTheSharedCopyWithoutReloading(t *testing.T) {
	dir := t.TempDir()
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = os.Chdir(wd) }()
	sim, err := NewSim(Config{Listen: "127.0.0.1:18443", Hostname: "vc-join", DataDir: dir, Username: "root", Password: "pw",
		MountRegistry: t.TempDir(), VCenter: true, Hosts: []string{"esx-a", "esx-b"}, Cluster: "cl-join"})
	if err != nil {
		t.Fatal(err)
	}
	a, b := sim.hosts[0], sim.hosts[1]
	u, _ := parseVmfsUUID("5f1e2d3c-4b5a6978-8796-000c29aabb01")
	info := VmfsInfo{LvmMajor: 6, DataOffset: defaultDataOffset, FsMajor: 24, UUID: u, Label: "ds-shared", HasFS: true,
		Disk: DiskID{Type: 3, Lun: 1, Model: "COMSTAR", ID: DeviceIDFor(naaA, "COMSTAR")}}
	lun := &Lun{Canonical: "naa." + naaA, NAA: naaA, Vmfs: &info, Portal: "127.0.0.1:1", Target: "iqn.none:none",
		Ident: LunIdentity{Product: "COMSTAR", BlockSize: 512, Blocks: 96 << 11}}

	// host A's mount, as loadVolumeFiles leaves it: the working copy holds a VM's files
	va := &Volume{UUID: info.UUIDString(), Label: info.Label, Lun: lun, Extents: []*Lun{lun}, Info: info}
	vmx := filepath.Join(va.Dir(), "app0a", "app0a.vmx")
	if err := os.MkdirAll(filepath.Dir(vmx), 0700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vmx, []byte("displayName = \"app0a\"\n"), 0600); err != nil {
		t.Fatal(err)
	}
	va.lastHash = a.dirHash(va)
	a.createDatastoreEntity(va)
	a.volumes[va.UUID] = va
	before, _ := os.Stat(vmx)

	vb, f := b.mountVolume([]*Lun{lun}, false)
	if f != nil {
		t.Fatalf("host B could not join the volume host A mounts: %s", faultText(f))
	}
	after, err := os.Stat(vmx)
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("host B's mount replaced the shared files (%v)", err)
	}
	if vb.DS != va.DS || len(va.DS.Host) != 2 || vb.lastHash != va.lastHash {
		t.Fatalf("one datastore mounted by both hosts expected: %d mounts, same entity %v", len(va.DS.Host), vb.DS == va.DS)
	}
	a.mu.Lock()
	delete(a.volumes, va.UUID) // its LUN accepts no login: nothing to sync at close
	a.mu.Unlock()
	b.mu.Lock()
	delete(b.volumes, vb.UUID)
	b.mu.Unlock()
	sim.Close()
}
