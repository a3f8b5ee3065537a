package main

import (
	"context"
	"net/url"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// With -dell-idrac the host shows its iDRAC USB NIC as pyvmomi 6.7.3's recorded Dell ESXi 6.7
// host does (test_json_host_explode.yaml, host-14, config.network): pnic vusb0, vmk1 at
// 169.254.0.2/24 on "iDRAC Network", a route 169.254.0.0/24 via vmk1, and no vSwitch, port
// group or Network entity for it. A new VMkernel NIC then gets the next free number, vmk2.
func TestDellIDRACAsTheRecordedDellHostShowsIt(t *testing.T) {
	dellIDRAC = true
	defer func() { dellIDRAC = false }()
	addr := freePort(t)
	srv, info, err := Start(Config{Listen: addr, Hostname: "esx-dell", DataDir: t.TempDir(),
		IQN: "iqn.1998-01.com.vmware:esx-dell", Username: "root", Password: "pw", MountRegistry: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	ctx := context.Background()
	u, _ := soap.ParseURL(info.URL)
	u.User = url.UserPassword("root", "pw")
	c, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		t.Fatal(err)
	}
	host := object.NewHostSystem(c.Client, types.ManagedObjectReference{Type: "HostSystem", Value: "ha-host"})
	var h mo.HostSystem
	read := func() {
		t.Helper()
		if err := host.Properties(ctx, host.Reference(), []string{"config.network", "config.virtualNicManagerInfo", "network"}, &h); err != nil {
			t.Fatal(err)
		}
	}
	read()
	net := h.Config.Network

	var vusb *types.PhysicalNic
	for i := range net.Pnic {
		if net.Pnic[i].Device == "vusb0" {
			vusb = &net.Pnic[i]
		}
	}
	if vusb == nil || vusb.Driver != "cdce" || vusb.Pci != "" || vusb.LinkSpeed == nil || vusb.LinkSpeed.SpeedMb != 100 ||
		vusb.ResourcePoolSchedulerAllowed == nil || *vusb.ResourcePoolSchedulerAllowed {
		t.Fatalf("vusb0: %+v", vusb)
	}
	var vmk1 *types.HostVirtualNic
	for i := range net.Vnic {
		if net.Vnic[i].Device == "vmk1" {
			vmk1 = &net.Vnic[i]
		}
	}
	if vmk1 == nil || vmk1.Portgroup != "iDRAC Network" || vmk1.Spec.Portgroup != "iDRAC Network" || vmk1.Port != "" ||
		vmk1.Spec.Ip.IpAddress != "169.254.0.2" || vmk1.Spec.Ip.SubnetMask != "255.255.255.0" || vmk1.Spec.Ip.Dhcp ||
		vmk1.Spec.Mtu != 1500 || vmk1.Spec.NetStackInstanceKey != "defaultTcpipStack" {
		t.Fatalf("vmk1: %+v", vmk1)
	}
	// Hidden: the API lists neither its vSwitch nor its port group, and no Network entity.
	if len(net.Vswitch) != 1 || net.Vswitch[0].Name != "vSwitch0" {
		t.Fatalf("vswitches %+v", net.Vswitch)
	}
	for _, pg := range net.Portgroup {
		if pg.Spec.Name == "iDRAC Network" {
			t.Fatal("iDRAC Network listed in config.network.portgroup")
		}
	}
	for _, n := range h.Network {
		if n.Value == "HaNetwork-iDRAC Network" {
			t.Fatal("iDRAC Network has a Network entity")
		}
	}
	route := false
	for _, r := range net.RouteTableInfo.IpRoute {
		route = route || (r.Network == "169.254.0.0" && r.PrefixLength == 24 && r.DeviceName == "vmk1")
	}
	if !route {
		t.Fatalf("no route 169.254.0.0/24 via vmk1: %+v", net.RouteTableInfo.IpRoute)
	}
	// The recorded host lists vmk1 as a candidate of every NIC type and selects only vmk0 for management.
	for _, nc := range h.Config.VirtualNicManagerInfo.NetConfig {
		seen := false
		for _, v := range nc.CandidateVnic {
			seen = seen || v.Device == "vmk1"
		}
		if !seen {
			t.Fatalf("%s: vmk1 not a candidate", nc.NicType)
		}
		if nc.NicType == "management" && (len(nc.SelectedVnic) != 1 || nc.SelectedVnic[0] != "management.key-vim.host.VirtualNic-vmk0") {
			t.Fatalf("management selects %v", nc.SelectedVnic)
		}
	}

	// vmk1 is taken: a NIC added for iSCSI is vmk2, and vmk1 stays as it was.
	ns, err := host.ConfigManager().NetworkSystem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spec := &types.HostVirtualSwitchSpec{NumPorts: 32, Mtu: 9000, Bridge: &types.HostVirtualSwitchBondBridge{NicDevice: []string{"vmnic1"}}}
	if err := ns.AddVirtualSwitch(ctx, "vSwitch1", spec); err != nil {
		t.Fatal(err)
	}
	if err := ns.AddPortGroup(ctx, types.HostPortGroupSpec{Name: "iSCSI-A", VswitchName: "vSwitch1", VlanId: 20}); err != nil {
		t.Fatal(err)
	}
	dev, err := ns.AddVirtualNic(ctx, "iSCSI-A", types.HostVirtualNicSpec{
		Ip: &types.HostIpConfig{IpAddress: "10.20.0.11", SubnetMask: "255.255.255.0"}, Mtu: 9000})
	if err != nil || dev != "vmk2" {
		t.Fatalf("AddVirtualNic: %q %v", dev, err)
	}
	read()
	for _, v := range h.Config.Network.Vnic {
		if v.Device == "vmk1" && (v.Portgroup != "iDRAC Network" || v.Spec.Ip.IpAddress != "169.254.0.2") {
			t.Fatalf("vmk1 changed: %+v", v)
		}
	}
}

// Without the flag the host is govmomi's esx dump with esxsim's own NICs: no iDRAC.
func TestNoIDRACByDefault(t *testing.T) {
	sim, err := NewSim(Config{Listen: "127.0.0.1:18443", Hostname: "esx-plain", DataDir: t.TempDir(),
		IQN: "iqn.1998-01.com.vmware:esx-plain", Username: "root", Password: "pw", MountRegistry: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	info := sim.hosts[0].netsys.NetworkInfo
	for _, p := range info.Pnic {
		if p.Device == "vusb0" {
			t.Fatal("vusb0 without -dell-idrac")
		}
	}
	if len(info.Vnic) != 1 || info.Vnic[0].Device != "vmk0" {
		t.Fatalf("vnics %+v", info.Vnic)
	}
}
