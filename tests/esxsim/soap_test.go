package main

import (
	"context"
	"testing"
	"time"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// WaitForUpdatesEx as the vSphere API reference describes it for a real host: the first call
// (empty version) answers at once with the current values; later calls are held open until a
// watched property changes, or until maxWaitSeconds pass, and then answer with no update set.
// esxdr's waits rely on both halves (a long poll below the socket timeout, looped).
func TestWaitForUpdatesExHeldOpenUntilMaxWaitSeconds(t *testing.T) {
	c, ss := startSim(t, Config{})
	ctx := context.Background()
	pc, err := property.DefaultCollector(c.Client).Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Destroy(ctx)
	if err := pc.CreateFilter(ctx, types.CreateFilter{Spec: types.PropertyFilterSpec{
		ObjectSet: []types.ObjectSpec{{Obj: ss}},
		PropSet:   []types.PropertySpec{{Type: "HostStorageSystem", PathSet: []string{"storageDeviceInfo"}}},
	}}); err != nil {
		t.Fatal(err)
	}
	wait := func(version string, max int32) (*types.UpdateSet, time.Duration) {
		start := time.Now()
		res, err := methods.WaitForUpdatesEx(ctx, c.Client, &types.WaitForUpdatesEx{
			This: pc.Reference(), Version: version, Options: &types.WaitOptions{MaxWaitSeconds: &max}})
		if err != nil {
			t.Fatal(err)
		}
		return res.Returnval, time.Since(start)
	}

	first, took := wait("", 10)
	if first == nil || len(first.FilterSet) != 1 || took > time.Second {
		t.Fatalf("the first call must answer at once with the current state: %+v after %v", first, took)
	}
	v := first.Version

	// Nothing changes: held for maxWaitSeconds, then an empty answer.
	none, took := wait(v, 2)
	if none != nil {
		t.Fatalf("an update set with nothing changed: %+v", none)
	}
	if took < 1900*time.Millisecond || took > 4*time.Second {
		t.Fatalf("held %v for maxWaitSeconds=2", took)
	}

	// A change half a second in ends the wait then, not at maxWaitSeconds.
	go func() {
		time.Sleep(500 * time.Millisecond)
		if _, err := methods.UpdateSoftwareInternetScsiEnabled(ctx, c.Client,
			&types.UpdateSoftwareInternetScsiEnabled{This: ss, Enabled: true}); err != nil {
			t.Error(err)
		}
	}()
	upd, took := wait(v, 20)
	if upd == nil || len(upd.FilterSet) != 1 || len(upd.FilterSet[0].ObjectSet) != 1 {
		t.Fatalf("no update for the change: %+v", upd)
	}
	if took < 400*time.Millisecond || took > 5*time.Second {
		t.Fatalf("the change was reported after %v", took)
	}
	if cs := upd.FilterSet[0].ObjectSet[0].ChangeSet; len(cs) == 0 || cs[0].Name != "storageDeviceInfo" {
		t.Fatalf("changes %+v", cs)
	}
}
