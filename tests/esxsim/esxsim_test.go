package main

import (
	"context"
	"encoding/hex"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// memDev is an in-memory LUN.
type memDev struct{ b []byte }

func (m *memDev) ReadAt(off int64, n int) ([]byte, error) {
	out := make([]byte, n)
	copy(out, m.b[off:off+int64(n)])
	return out, nil
}
func (m *memDev) WriteAt(off int64, d []byte) error { copy(m.b[off:], d); return nil }
func (m *memDev) Size() int64                       { return int64(len(m.b)) }
func (m *memDev) BlockSize() int                    { return 512 }

func TestVPD83PrefersNAA6(t *testing.T) {
	// tgt 1.0.85: T10 vendor id, NAA-3 (8 bytes), NAA-6 (16 bytes)
	t10 := append([]byte{0x02, 0x01, 0x00, 0x08}, []byte("IET     ")...)
	naa3 := []byte{0x01, 0x03, 0x00, 0x08, 0x30, 0, 0, 0, 0, 1, 0, 1}
	n6, _ := hex.DecodeString("600144f0aabbccdd0011223344556677")
	naa6 := append([]byte{0x01, 0x03, 0x00, 0x10}, n6...)
	body := append(append(append([]byte{}, t10...), naa3...), naa6...)
	page := append([]byte{0, 0x83, 0, byte(len(body))}, body...)
	naa, vid := parseVPD83(page)
	if naa != "600144f0aabbccdd0011223344556677" {
		t.Fatalf("naa = %s", naa)
	}
	if vid != "IET" {
		t.Fatalf("t10 = %q", vid)
	}
	only3 := append([]byte{0, 0x83, 0, byte(len(naa3))}, naa3...)
	if naa, _ := parseVPD83(only3); naa != "3000000000010001" {
		t.Fatalf("naa3 = %s", naa)
	}
}

func TestVmfsUUIDRoundTrip(t *testing.T) {
	s := "5f1e2d3c-4b5a6978-8796-000c29aabbcc"
	u, err := parseVmfsUUID(s)
	if err != nil {
		t.Fatal(err)
	}
	if formatVmfsUUID(u) != s {
		t.Fatalf("got %s", formatVmfsUUID(u))
	}
	if _, err := parseVmfsUUID("nope"); err == nil {
		t.Fatal("expected error")
	}
}

func TestVmfsGPTHeadersAndDirectory(t *testing.T) {
	d := &memDev{b: make([]byte, 64<<20)}
	if v, err := ReadVmfs(d); err != nil || v != nil {
		t.Fatalf("empty LUN: %v %v", v, err)
	}
	first, last, err := WriteGPT(d)
	if err != nil || first != 2048 || last != int64(len(d.b)/512)-34 {
		t.Fatalf("gpt %d %d %v", first, last, err)
	}
	naa := "600144f0c0ffee000000000000000001"
	u, _ := parseVmfsUUID("5f1e2d3c-4b5a6978-8796-000c29aabbcc")
	in := &VmfsInfo{PartStart: first * 512, LvmMajor: 6, DataOffset: defaultDataOffset, FsMajor: 24, UUID: u, Label: "prod-ds1",
		Disk: DiskID{Type: 3, Lun: 1, Vendor: "IET", Model: "VIRTUAL-DISK", Rev: "0001", ID: DeviceIDFor(naa, "VIRTUAL-DISK")}}
	if err := WriteHeaders(d, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadVmfs(d)
	if err != nil || out == nil {
		t.Fatalf("read: %v %v", out, err)
	}
	if !out.HasGPT || out.PartStart != 0x100000 || out.Label != "prod-ds1" || out.UUIDString() != "5f1e2d3c-4b5a6978-8796-000c29aabbcc" {
		t.Fatalf("got %+v", out)
	}
	if out.Disk.ID != DeviceIDFor(naa, "VIRTUAL-DISK") || out.Disk.Len != 22 || out.Disk.Model != "VIRTUAL-DISK" || out.Disk.Vendor != "IET" {
		t.Fatalf("disk id %+v", out.Disk)
	}
	if !out.MatchesLun(naa, "VIRTUAL-DISK") || out.MatchesLun(naa, "LIO-ORG") || out.MatchesLun("600144f0c0ffee0000000000000000aa", "VIRTUAL-DISK") {
		t.Fatal("device id matching is wrong")
	}
	// FS3 magic at the documented absolute offset: partition + dataOffset + 0x200000
	if m := d.b[0x100000+0x1100000+0x200000]; m != 0x5E {
		t.Fatalf("FS3 magic byte at wrong place: %x", m)
	}
	dir := &Directory{Format: "esxsim-dir-1", Generation: 3, Dirs: []string{"vm1"}, Files: map[string]string{"vm1/vm1.vmx": b64([]byte("displayName = \"vm1\"\n"))}}
	blob, _ := EncodeDirectory(dir)
	if err := d.WriteAt(out.VolumeStart()+dirOffset, blob); err != nil {
		t.Fatal(err)
	}
	back, err := ReadDirectory(d, out)
	if err != nil || back.Generation != 3 || back.Files["vm1/vm1.vmx"] == "" {
		t.Fatalf("dir %+v %v", back, err)
	}
}

func TestBareVolumeWithoutGPT(t *testing.T) {
	d := &memDev{b: make([]byte, 64<<20)}
	in := &VmfsInfo{PartStart: 0, LvmMajor: 6, DataOffset: defaultDataOffset, FsMajor: 14, Label: "bare",
		Disk: DiskID{ID: "600144f0c0ffee000000000000000001"}}
	if err := WriteHeaders(d, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadVmfs(d)
	if err != nil || out == nil || out.HasGPT || out.PartStart != 0 || vmfsMajor(out) != 5 {
		t.Fatalf("%+v %v", out, err)
	}
	if !out.MatchesLun("600144F0C0FFEE000000000000000001", "anything") {
		t.Fatal("bare NAA id (no product suffix) must match")
	}
}

func TestVmxParseAndUUIDs(t *testing.T) {
	f := parseVmx([]byte("displayName = \"app 01\"\nmemsize = \"256\"\n# comment\nethernet0.networkName = \"VM Network\"\n"))
	if f.get("displayname") != "app 01" || f.get("memsize") != "256" || f.get("ethernet0.networkName") != "VM Network" {
		t.Fatalf("%+v", f.vals)
	}
	f.set("memsize", "512")
	f.del("ethernet")
	s := string(f.bytes())
	if !strings.Contains(s, `memsize = "512"`) || strings.Contains(s, "ethernet0") {
		t.Fatal(s)
	}
	u := "564d1234-5678-9abc-def0-123456789abc"
	if vmwareUUID(u) != "56 4d 12 34 56 78 9a bc-de f0 12 34 56 78 9a bc" || fromVmwareUUID(vmwareUUID(u)) != u {
		t.Fatal(vmwareUUID(u))
	}
}

func TestComputedPolicyOverrides(t *testing.T) {
	sw := defaultSwitchPolicy([]string{"vmnic1", "vmnic2"})
	pg := &types.HostNetworkPolicy{NicTeaming: &types.HostNicTeamingPolicy{NicOrder: &types.HostNicOrderPolicy{ActiveNic: []string{"vmnic2"}}}}
	c := computePolicy(sw, pg)
	if got := c.NicTeaming.NicOrder.ActiveNic; len(got) != 1 || got[0] != "vmnic2" {
		t.Fatalf("%v", got)
	}
	if c.NicTeaming.Policy != "loadbalance_srcid" || c.Security == nil {
		t.Fatal("switch policy not inherited")
	}
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestServer runs the whole SOAP server in-process with a govmomi client.
func TestServer(t *testing.T) {
	addr := freePort(t)
	cfg := Config{Listen: addr, Hostname: "esx-go", DataDir: t.TempDir(), IQN: "iqn.1998-01.com.vmware:esx-go",
		Username: "root", Password: "pw", HeartbeatDelay: 0, MountRegistry: t.TempDir()}
	srv, info, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	if info.URL != "http://"+addr+"/sdk" {
		t.Fatal(info.URL)
	}
	ctx := context.Background()
	u, _ := soap.ParseURL(info.URL)
	u.User = url.UserPassword("root", "wrong")
	if _, err := govmomi.NewClient(ctx, u, true); err == nil {
		t.Fatal("wrong password accepted")
	}
	u.User = url.UserPassword("root", "pw")
	c, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		t.Fatal(err)
	}
	host := object.NewHostSystem(c.Client, types.ManagedObjectReference{Type: "HostSystem", Value: "ha-host"})
	var h mo.HostSystem
	if err := host.Properties(ctx, host.Reference(), []string{"name", "configManager", "config.network"}, &h); err != nil {
		t.Fatal(err)
	}
	if h.Name != "esx-go" || h.ConfigManager.VsanSystem != nil || h.ConfigManager.IscsiManager == nil {
		t.Fatalf("host %s %+v", h.Name, h.ConfigManager)
	}
	ns, err := host.ConfigManager().NetworkSystem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spec := &types.HostVirtualSwitchSpec{NumPorts: 32, Mtu: 9000, Bridge: &types.HostVirtualSwitchBondBridge{NicDevice: []string{"vmnic3"}}}
	if err := ns.AddVirtualSwitch(ctx, "vSwitchGo", spec); err != nil {
		t.Fatal(err)
	}
	if err := ns.AddVirtualSwitch(ctx, "vSwitchGo", spec); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("want AlreadyExists, got %v", err)
	}
	if err := ns.AddPortGroup(ctx, types.HostPortGroupSpec{Name: "pg-go", VswitchName: "vSwitchGo"}); err != nil {
		t.Fatal(err)
	}
	if err := host.Properties(ctx, host.Reference(), []string{"config.network"}, &h); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, vs := range h.Config.Network.Vswitch {
		if vs.Name == "vSwitchGo" {
			found = vs.Mtu == 9000 && vs.Spec.NumPorts == 32 && len(vs.Portgroup) == 1
		}
	}
	if !found {
		t.Fatal("vSwitchGo not mirrored into host.config.network")
	}
	if err := ns.RemoveVirtualSwitch(ctx, "nope"); err == nil {
		t.Fatal("want NotFound")
	}
}

func TestSearchFolderPathLikeESXi(t *testing.T) {
	for in, want := range map[string]string{
		"[ds]": "[ds]", "[ds] ": "[ds]", "[ds]/": "[ds]", "[ds]/app01": "[ds] app01", "[ds] /app01": "[ds] app01",
		"[ds] app01": "[ds] app01", "[ds]/app01/sub/": "[ds] app01/sub", "[my ds]/a b": "[my ds] a b",
	} {
		if got := esxiFolderPath(in); got != want {
			t.Errorf("esxiFolderPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPropertyPathsOfTheDeclaredType(t *testing.T) {
	for _, c := range []struct {
		typ, path string
		ok        bool
	}{
		{"VirtualMachine", "runtime.question", true},
		{"VirtualMachine", "config.hardware.device", true},
		{"VirtualMachine", "guestHeartbeatStatus", true},
		{"VirtualMachine", "runtime.powerstate", false},
		{"VirtualMachine", "runtime.host.name", false},          // through a reference
		{"VirtualMachine", "config.hardware.device.key", false}, // into an array
		{"Task", "info.state", true},
		{"Task", "runtime.question", false},
		{"HostSystem", "configManager.storageSystem", true},
		{"ComputeResource", "resourcePool", true},
		{"ClusterComputeResource", "configurationEx", true},
		{"ClusterComputeResource", "resourcePool", true}, // inherited
		{"Datacenter", "vmFolder", true},
		{"Datastore", "info.vmfs", true}, // info is polymorphic (VmfsDatastoreInfo): not refused
		{"Datastore", "browser", true},
		{"Datastore", "nosuch", false},
	} {
		typ := moType(c.typ)
		if typ == nil {
			t.Fatalf("no mo type %s", c.typ)
		}
		if got := validPath(typ, c.path); got != c.ok {
			t.Errorf("%s.%s: valid = %v, want %v", c.typ, c.path, !c.ok, c.ok)
		}
	}
	if typ, p := invalidProperty([]types.PropertyFilterSpec{{PropSet: []types.PropertySpec{
		{Type: "Task", PathSet: []string{"info.state"}}, {Type: "Task", PathSet: []string{"runtime.question"}}}}}); typ != "Task" || p != "runtime.question" {
		t.Errorf("invalidProperty = %s %s", typ, p)
	}
	if moType("NoSuchType") != nil {
		t.Error("an unknown type has no mo struct")
	}
}
