package main

import (
	"bytes"
	"os"
	"testing"
)

// TestIscsiAgainstTgtd drives esxsim's iSCSI initiator against a real tgtd.
//
// scripts/test-esxsim starts that tgtd (its own control port and portal on
// 127.0.0.x), gives it one target with one file-backed disk LUN, and sets:
//
//	ESXSIM_TEST_PORTAL   host:port of the tgtd portal
//	ESXSIM_TEST_REQUIRE  1: the tgtd is provided, so a missing portal is a failure, not a skip
//	ESXSIM_TEST_TARGET   the target's IQN (SendTargets must list it)
//	ESXSIM_TEST_NAA      the NAA tgt derives from the scsi_id it was given (VPD 0x83)
//	ESXSIM_TEST_SERIAL   the scsi_sn it was given (VPD 0x80)
//	ESXSIM_TEST_BACKING  the LUN's backing file: what the initiator wrote must be there
//
// Without ESXSIM_TEST_PORTAL (and without ESXSIM_TEST_REQUIRE) it skips: plain
// `go test` has no tgtd.
func TestIscsiAgainstTgtd(t *testing.T) {
	portal := os.Getenv("ESXSIM_TEST_PORTAL")
	if portal == "" {
		if os.Getenv("ESXSIM_TEST_REQUIRE") == "1" {
			t.Fatal("ESXSIM_TEST_REQUIRE=1 but ESXSIM_TEST_PORTAL is not set: the tgtd the caller promised is missing")
		}
		t.Skip("needs a real tgtd: run scripts/test-esxsim (or set ESXSIM_TEST_PORTAL=host:port)")
	}
	wantTarget := os.Getenv("ESXSIM_TEST_TARGET")
	wantNAA := os.Getenv("ESXSIM_TEST_NAA")
	wantSerial := os.Getenv("ESXSIM_TEST_SERIAL")
	backing := os.Getenv("ESXSIM_TEST_BACKING")

	d, err := Login(portal, "iqn.1998-01.com.vmware:test", "", nil)
	if err != nil {
		t.Fatalf("discovery login to the tgtd at %s: %v", portal, err)
	}
	ts, err := d.SendTargets()
	d.Close()
	if err != nil || len(ts) == 0 {
		t.Fatal(err, ts)
	}
	t.Logf("targets %+v", ts)
	name := ts[0].Name
	if wantTarget != "" {
		name = ""
		for _, e := range ts {
			if e.Name == wantTarget {
				name = e.Name
			}
		}
		if name == "" {
			t.Fatalf("SendTargets does not list %s: %+v", wantTarget, ts)
		}
	}
	s, err := Login(portal, "iqn.1998-01.com.vmware:test", name, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	luns, err := s.ReportLuns()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("luns %v", luns)
	disks := 0
	for _, l := range luns {
		id, err := s.Identify(l)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("lun %d %+v", l, id)
		if id.Qualifier != 0 || id.DeviceType != 0 {
			continue // tgt's LUN 0 is its controller (device type 0x0c)
		}
		disks++
		if wantNAA != "" && id.NAA != wantNAA {
			t.Errorf("lun %d: VPD 0x83 NAA %q, tgt was given %q", l, id.NAA, wantNAA)
		}
		if wantSerial != "" && id.Serial != wantSerial {
			t.Errorf("lun %d: VPD 0x80 serial %q, tgt was given %q", l, id.Serial, wantSerial)
		}
		if backing != "" {
			st, err := os.Stat(backing)
			if err != nil {
				t.Fatal(err)
			}
			if got := int64(id.Blocks) * int64(id.BlockSize); got != st.Size() {
				t.Errorf("lun %d: READ CAPACITY says %d bytes (%d x %d), the backing file has %d",
					l, got, id.Blocks, id.BlockSize, st.Size())
			}
		}
		data := make([]byte, 1500)
		for i := range data {
			data[i] = byte(i)
		}
		if err := s.WriteAt(l, 1000, data, int(id.BlockSize)); err != nil {
			t.Fatal(err)
		}
		back, err := s.ReadAt(l, 1000, 1500, int(id.BlockSize))
		if err != nil {
			t.Fatal(err)
		}
		if i := firstDiff(back, data); i >= 0 {
			t.Fatalf("mismatch at %d", i)
		}
		big := make([]byte, 300*1024)
		for i := range big {
			big[i] = byte(i * 7)
		}
		if err := s.WriteAt(l, 1<<20, big, 512); err != nil {
			t.Fatal(err)
		}
		b2, err := s.ReadAt(l, 1<<20, len(big), 512)
		if err != nil {
			t.Fatal(err)
		}
		if i := firstDiff(b2, big); i >= 0 {
			t.Fatalf("big mismatch %d", i)
		}
		if backing != "" {
			// Not only what the initiator reads back: the bytes are in tgtd's backing file.
			f, err := os.Open(backing)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range []struct {
				off  int64
				data []byte
			}{{1000, data}, {1 << 20, big}} {
				got := make([]byte, len(w.data))
				if _, err := f.ReadAt(got, w.off); err != nil {
					f.Close()
					t.Fatal(err)
				}
				if i := firstDiff(got, w.data); i >= 0 {
					f.Close()
					t.Fatalf("backing file %s differs at offset %d", backing, w.off+int64(i))
				}
			}
			f.Close()
		}
	}
	if disks == 0 {
		t.Fatalf("no disk LUN behind %s: nothing was read or written", name)
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return len(a)
}
