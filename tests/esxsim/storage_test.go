package main

import (
	"context"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// seenLuns is the canonical names and the topology targets (portal|iqn) of the storage system.
func seenLuns(t *testing.T, c *govmomi.Client, ss types.ManagedObjectReference) ([]string, []string) {
	t.Helper()
	var s mo.HostStorageSystem
	if err := property.DefaultCollector(c.Client).RetrieveOne(context.Background(), ss, []string{"storageDeviceInfo"}, &s); err != nil {
		t.Fatal(err)
	}
	var luns, targets []string
	for _, l := range s.StorageDeviceInfo.ScsiLun {
		luns = append(luns, l.GetScsiLun().CanonicalName)
	}
	if s.StorageDeviceInfo.ScsiTopology != nil {
		for _, a := range s.StorageDeviceInfo.ScsiTopology.Adapter {
			for _, tg := range a.Target {
				if tr, ok := tg.Transport.(*types.HostInternetScsiTargetTransport); ok {
					targets = append(targets, strings.Join(tr.Address, ",")+"|"+tr.IScsiName)
				}
			}
		}
	}
	sort.Strings(luns)
	sort.Strings(targets)
	return luns, targets
}

// RescanHba on the software iSCSI adapter does what RescanAllHba does for it, as on ESXi:
// SendTargets discovery, logins into the real tgtd (scripts/test-esxsim starts it) and the LUN
// scan, then the VMFS rescan. RescanHba of another adapter leaves the iSCSI LUNs as they are,
// and an adapter the host does not have is NotFound.
func TestRescanHbaOfTheSoftwareAdapterLikeRescanAllHba(t *testing.T) {
	portal := os.Getenv("ESXSIM_TEST_PORTAL")
	if portal == "" {
		if os.Getenv("ESXSIM_TEST_REQUIRE") == "1" {
			t.Fatal("ESXSIM_TEST_REQUIRE=1 but ESXSIM_TEST_PORTAL is not set")
		}
		t.Skip("needs a real tgtd: run scripts/test-esxsim (or set ESXSIM_TEST_PORTAL=host:port)")
	}
	wantNAA, wantTarget := os.Getenv("ESXSIM_TEST_NAA"), os.Getenv("ESXSIM_TEST_TARGET")
	addr, portS, err := net.SplitHostPort(portal)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(portS)
	c, ss := startSim(t, Config{})
	ctx := context.Background()

	// Before the adapter exists, RescanHba of it is NotFound (as on a host without software iSCSI).
	if _, err := methods.RescanHba(ctx, c.Client, &types.RescanHba{This: ss, HbaDevice: swHbaDevice}); err == nil ||
		!strings.Contains(err.Error(), "not found") {
		t.Fatalf("RescanHba before software iSCSI is enabled: %v", err)
	}
	enableSoftwareIscsi(t, c, ss)
	if _, err := methods.AddInternetScsiSendTargets(ctx, c.Client, &types.AddInternetScsiSendTargets{
		This: ss, IScsiHbaDevice: swHbaDevice,
		Targets: []types.HostInternetScsiHbaSendTarget{{Address: addr, Port: int32(port)}}}); err != nil {
		t.Fatal(err)
	}
	if luns, _ := seenLuns(t, c, ss); len(luns) != 0 {
		t.Fatalf("LUNs before any rescan: %v", luns)
	}

	if _, err := methods.RescanHba(ctx, c.Client, &types.RescanHba{This: ss, HbaDevice: swHbaDevice}); err != nil {
		t.Fatal(err)
	}
	byHba, targetsByHba := seenLuns(t, c, ss)
	found := false
	for _, l := range byHba {
		found = found || l == "naa."+wantNAA
	}
	if !found {
		t.Fatalf("RescanHba(%s) did not find naa.%s: %v", swHbaDevice, wantNAA, byHba)
	}
	if !strings.Contains(strings.Join(targetsByHba, " "), "|"+wantTarget) {
		t.Fatalf("no topology target %s: %v", wantTarget, targetsByHba)
	}

	if _, err := methods.RescanAllHba(ctx, c.Client, &types.RescanAllHba{This: ss}); err != nil {
		t.Fatal(err)
	}
	byAll, targetsByAll := seenLuns(t, c, ss)
	if strings.Join(byAll, " ") != strings.Join(byHba, " ") || strings.Join(targetsByAll, " ") != strings.Join(targetsByHba, " ") {
		t.Fatalf("RescanHba saw %v %v, RescanAllHba %v %v", byHba, targetsByHba, byAll, targetsByAll)
	}

	// Another adapter of the host (a local block HBA of the template): accepted, iSCSI LUNs kept.
	var s mo.HostStorageSystem
	if err := property.DefaultCollector(c.Client).RetrieveOne(ctx, ss, []string{"storageDeviceInfo"}, &s); err != nil {
		t.Fatal(err)
	}
	other := ""
	for _, a := range s.StorageDeviceInfo.HostBusAdapter {
		if d := a.GetHostHostBusAdapter().Device; d != swHbaDevice {
			other = d
			break
		}
	}
	if other == "" {
		t.Fatal("the host has no adapter besides the software iSCSI one")
	}
	if _, err := methods.RescanHba(ctx, c.Client, &types.RescanHba{This: ss, HbaDevice: other}); err != nil {
		t.Fatalf("RescanHba(%s): %v", other, err)
	}
	if after, _ := seenLuns(t, c, ss); strings.Join(after, " ") != strings.Join(byHba, " ") {
		t.Fatalf("RescanHba(%s) changed the iSCSI LUNs: %v", other, after)
	}
	if _, err := methods.RescanHba(ctx, c.Client, &types.RescanHba{This: ss, HbaDevice: "vmhba99"}); err == nil ||
		!strings.Contains(err.Error(), "not found") {
		t.Fatalf("RescanHba(vmhba99): want NotFound, got %v", err)
	}
}
