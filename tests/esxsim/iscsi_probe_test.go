package main

import (
	"os"
	"testing"
)

// TestIscsiAgainstTgtd runs only when ESXSIM_TEST_PORTAL points at a live tgtd.
func TestIscsiAgainstTgtd(t *testing.T) {
	portal := os.Getenv("ESXSIM_TEST_PORTAL")
	if portal == "" {
		t.Skip("ESXSIM_TEST_PORTAL not set")
	}
	d, err := Login(portal, "iqn.1998-01.com.vmware:test", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := d.SendTargets()
	d.Close()
	if err != nil || len(ts) == 0 {
		t.Fatal(err, ts)
	}
	t.Logf("targets %+v", ts)
	s, err := Login(portal, "iqn.1998-01.com.vmware:test", ts[0].Name, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	luns, err := s.ReportLuns()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("luns %v", luns)
	for _, l := range luns {
		id, err := s.Identify(l)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("lun %d %+v", l, id)
		if id.DeviceType == 0 {
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
			for i := range data {
				if back[i] != data[i] {
					t.Fatalf("mismatch at %d", i)
				}
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
			for i := range big {
				if b2[i] != big[i] {
					t.Fatalf("big mismatch %d", i)
				}
			}
		}
	}
}
