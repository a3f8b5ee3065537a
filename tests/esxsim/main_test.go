package main

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// startSim serves a standalone host in-process (cfg's zero fields get test defaults) and
// returns a logged-in govmomi client and the host's storage system.
func startSim(t *testing.T, cfg Config) (*govmomi.Client, types.ManagedObjectReference) {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = freePort(t)
	}
	cfg.Hostname, cfg.IQN, cfg.Username, cfg.Password = "esx-go", "iqn.1998-01.com.vmware:esx-go", "root", "pw"
	cfg.DataDir, cfg.MountRegistry = t.TempDir(), t.TempDir()
	srv, info, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	u, _ := soap.ParseURL(info.URL)
	u.User = url.UserPassword("root", "pw")
	c, err := govmomi.NewClient(context.Background(), u, true)
	if err != nil {
		t.Fatal(err)
	}
	host := object.NewHostSystem(c.Client, types.ManagedObjectReference{Type: "HostSystem", Value: "ha-host"})
	var h mo.HostSystem
	if err := host.Properties(context.Background(), host.Reference(), []string{"configManager.storageSystem"}, &h); err != nil {
		t.Fatal(err)
	}
	return c, *h.ConfigManager.StorageSystem
}

func enableSoftwareIscsi(t *testing.T, c *govmomi.Client, ss types.ManagedObjectReference) {
	t.Helper()
	if _, err := methods.UpdateSoftwareInternetScsiEnabled(context.Background(), c.Client,
		&types.UpdateSoftwareInternetScsiEnabled{This: ss, Enabled: true}); err != nil {
		t.Fatal(err)
	}
}

// The realistic profile is a real host's pace: guest heartbeats 45-120 s after power-on, and
// rescans that hold their call longer than the 30 s a client's socket waits for an ordinary
// call. The lab profile keeps the suite fast.
func TestProfiles(t *testing.T) {
	r := Profiles["realistic"]
	if r.HeartbeatDelay < 45*time.Second || r.HeartbeatDelay > 120*time.Second {
		t.Errorf("realistic heartbeat %v: a real guest's tools report 45-120 s after power-on", r.HeartbeatDelay)
	}
	if r.RescanDelay <= 30*time.Second {
		t.Errorf("realistic rescan %v: must outlast a 30 s socket timeout, as a real rescan can", r.RescanDelay)
	}
	l := Profiles["lab"]
	if l.HeartbeatDelay > 2*time.Second || l.RescanDelay != 0 {
		t.Errorf("lab profile %+v is not fast", l)
	}
	if profileNames() != "lab, realistic" {
		t.Errorf("profiles: %s", profileNames())
	}
}

// A rescan answers when its scan is over (-rescan-delay), and the host keeps answering other
// calls meanwhile: the delay holds the call, not the storage system.
func TestRescanDelayHoldsTheCallNotTheHost(t *testing.T) {
	const delay = 1500 * time.Millisecond
	c, ss := startSim(t, Config{RescanDelay: delay})
	ctx := context.Background()
	enableSoftwareIscsi(t, c, ss)
	for _, rescan := range []func() error{
		func() error {
			_, err := methods.RescanHba(ctx, c.Client, &types.RescanHba{This: ss, HbaDevice: swHbaDevice})
			return err
		},
		func() error { _, err := methods.RescanAllHba(ctx, c.Client, &types.RescanAllHba{This: ss}); return err },
	} {
		done := make(chan time.Duration, 1)
		start := time.Now()
		go func(f func() error) {
			if err := f(); err != nil {
				t.Error(err)
			}
			done <- time.Since(start)
		}(rescan)
		time.Sleep(200 * time.Millisecond)
		readStart := time.Now()
		var s mo.HostStorageSystem
		if err := property.DefaultCollector(c.Client).RetrieveOne(ctx, ss, []string{"storageDeviceInfo"}, &s); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(readStart); took > delay/2 {
			t.Errorf("a property read during a rescan took %v: the rescan blocked the host", took)
		}
		if took := <-done; took < delay {
			t.Errorf("the rescan answered after %v, before its %v", took, delay)
		}
	}
	// Other storage calls are not held.
	start := time.Now()
	if _, err := methods.RescanVmfs(ctx, c.Client, &types.RescanVmfs{This: ss}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > delay/2 {
		t.Errorf("RescanVmfs took %v", took)
	}
}

// The lab's addresses: loopback, and the two-box lab's 198.18.0.0/15 (RFC 2544's test range).
// Anything else, a private LAN included, is refused, so esxsim never reaches a real network.
func TestIsLabAddress(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:3260": true, "127.0.0.2": true, "198.18.0.1:3260": true, "198.19.255.254": true,
		"198.17.255.255": false, "198.20.0.1": false, "10.0.0.1:3260": false, "192.168.1.10": false,
		"::1": false, "esx-dr": false, "": false,
	} {
		if got := IsLabAddress(addr); got != want {
			t.Errorf("IsLabAddress(%q) = %v, want %v", addr, got, want)
		}
	}
}
