package main

// The VMFS layout esxsim writes, checked against independent readers (vmfs6-tools'
// debugvmfs6, vmfs-tools' debugvmfs: run when installed) and the spanned-volume rules of
// volumes.go. docs/vmfs.md has the layout and its sources.

import (
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const (
	naaA = "600144f0b6a1c6b0000051a4d5e20001"
	naaB = "600144f0b6a1c6b0000051a4d5e20002"
)

func TestDeviceIDIsTheBinaryNAAAndSixProductCharacters(t *testing.T) {
	raw, _ := hex.DecodeString(naaA)
	if got := DeviceIDFor("naa."+strings.ToUpper(naaA), "COMSTAR "); got != string(raw)+"COMSTA" || len(got) != 22 {
		t.Fatalf("device id %x", got)
	}
	for _, c := range []struct {
		stored string
		ok     bool
	}{
		{string(raw) + "COMSTA", true},
		{naaA + "COMSTA", true}, // the hex text esxsim and esxdr wrote before
		{naaA, true},
		{string(raw), false}, // ESXi's form always has the product characters
		{naaA + "SOLARI", false},
		{naaB + "COMSTA", false},
	} {
		v := &VmfsInfo{Disk: DiskID{ID: c.stored}}
		if v.MatchesLun(naaA, "COMSTAR") != c.ok {
			t.Errorf("stored %q: match %v", PrintableDeviceID(c.stored), !c.ok)
		}
	}
}

// newVolume writes a single-LUN VMFS (GPT unless bare) the way createVmfs does.
func newVolume(t *testing.T, size int64, major uint32, bare bool, label string) (*memDev, *VmfsInfo) {
	d := &memDev{b: make([]byte, size)}
	var part int64
	if !bare {
		first, _, err := WriteGPT(d)
		if err != nil {
			t.Fatal(err)
		}
		part = first * 512
	}
	u, _ := parseVmfsUUID("5f1e2d3c-a1b2c3d4-e5f6-001122334455")
	fsMajor := uint32(24)
	if major == 5 {
		fsMajor = 14
	}
	in := &VmfsInfo{PartStart: part, HasGPT: !bare, LvmMajor: major, DataOffset: defaultDataOffset, FsMajor: fsMajor,
		UUID: u, Label: label, HasFS: true, DeviceNames: []string{"naa." + naaA + ":1"},
		Disk: DiskID{Type: 3, Lun: 2, Vendor: "SUN", Model: "COMSTAR", Rev: "1.0", ID: DeviceIDFor(naaA, "COMSTAR")}}
	if err := WriteHeaders(d, in); err != nil {
		t.Fatal(err)
	}
	if err := WriteFilesystem(d, in); err != nil {
		t.Fatal(err)
	}
	return d, in
}

// partitionFile saves the partition of a LUN as a file: vmfs-tools read partitions, not GPT LUNs.
func partitionFile(t *testing.T, d *memDev, v *VmfsInfo) string {
	end := int64(len(d.b))
	if v.HasGPT {
		end -= 34 * 512
	}
	p := filepath.Join(t.TempDir(), "part.img")
	if err := os.WriteFile(p, d.b[v.PartStart:end], 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func showFields(t *testing.T, tool string, args ...string) map[string]string {
	path, err := exec.LookPath(tool)
	if err != nil {
		t.Skipf("%s is not installed (Debian vmfs6-tools / vmfs-tools; scripts/setup installs them)", tool)
	}
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", tool, args, err, out)
	}
	fields := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s*([^:\n]+):\s*(.*)$`).FindAllStringSubmatch(string(out), -1) {
		fields[strings.TrimSpace(m[1])] = strings.TrimSpace(m[2])
	}
	return fields
}

func TestDebugvmfs6OpensWhatEsxsimWrites(t *testing.T) {
	d, in := newVolume(t, 64<<20, 6, false, "esxsim-ds")
	part := partitionFile(t, d, in)
	f := showFields(t, "debugvmfs6", part, "show")
	if f["UUID"] != in.UUIDString() || f["Label"] != "esxsim-ds" || f["Volume Version"] != "24" {
		t.Fatalf("debugvmfs6 show: %v", f)
	}
	lvm := showFields(t, "debugvmfs6", part, "show", "lvm")
	if lvm["UUID"] != formatVmfsUUID(in.LvmUUID) || lvm["Num. Extents"] != "1" {
		t.Fatalf("debugvmfs6 show lvm: %v", lvm)
	}
	if e := showFields(t, "debugvmfs6", part, "show", "lvm.extent[0]"); e["LUN"] != "2" {
		t.Fatalf("debugvmfs6 show lvm.extent[0]: %v", e)
	}
	// esxsim reads back what it wrote, and its file directory sits after the metadata
	out, err := ReadVmfs(d)
	if err != nil || out == nil || !out.HasFS || out.UUIDString() != in.UUIDString() || out.NumDevices != 1 {
		t.Fatalf("%+v %v", out, err)
	}
	if out.VolumeStart()+dirOffset < out.VolumeStart()+int64(fsBlocks)*fileBlock {
		t.Fatal("the esxsim directory overlaps the VMFS metadata")
	}
}

func TestDebugvmfsOpensAVmfs5WrittenByEsxsim(t *testing.T) {
	d, in := newVolume(t, 48<<20, 5, true, "old5")
	f := showFields(t, "debugvmfs", partitionFile(t, d, in), "show")
	if f["UUID"] != in.UUIDString() || f["Label"] != "old5" || f["Volume Version"] != "14" {
		t.Fatalf("debugvmfs show: %v", f)
	}
}

// spanned writes a volume over two LUNs: a head of 300 MiB (one whole 256 MiB physical extent)
// and a second extent.
func spanned(t *testing.T) (*memDev, *memDev, *VmfsInfo) {
	a := &memDev{b: make([]byte, 300<<20)}
	b := &memDev{b: make([]byte, 48<<20)}
	u, _ := parseVmfsUUID("5f1e2d3c-a1b2c3d4-e5f6-001122334466")
	var lvm [16]byte
	copy(lvm[:], "esxsim-span-lvm!")
	names := []string{"naa." + naaA + ":1", "naa." + naaB + ":1"}
	usableB := uint64(len(b.b)) - defaultDataOffset
	head := &VmfsInfo{LvmMajor: 6, DataOffset: defaultDataOffset, FsMajor: 24, UUID: u, Label: "wide", HasFS: true,
		HasVT: true, LvmUUID: lvm, NumDevices: 2, FirstPE: 0, LastPE: 0, VolumeBytes: peSize + usableB, DeviceNames: names,
		Disk: DiskID{Type: 3, Lun: 1, Model: "COMSTAR", ID: DeviceIDFor(naaA, "COMSTAR")}}
	second := &VmfsInfo{LvmMajor: 6, DataOffset: defaultDataOffset, HasVT: true, LvmUUID: lvm, NumDevices: 2,
		FirstPE: 1, LastPE: 1, VolumeBytes: peSize + usableB,
		Disk: DiskID{Type: 3, Lun: 2, Model: "COMSTAR", ID: DeviceIDFor(naaB, "COMSTAR")}}
	for _, w := range []struct {
		d *memDev
		v *VmfsInfo
	}{{a, head}, {b, second}} {
		if err := WriteHeaders(w.d, w.v); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteFilesystem(a, head); err != nil {
		t.Fatal(err)
	}
	return a, b, head
}

func TestSpannedVolumeReadByEsxsimAndDebugvmfs6(t *testing.T) {
	a, b, head := spanned(t)
	ra, err := ReadVmfs(a)
	if err != nil || ra == nil || !ra.HasFS || !ra.Head() || len(ra.DeviceNames) != 2 {
		t.Fatalf("head %+v %v", ra, err)
	}
	rb, err := ReadVmfs(b)
	if err != nil || rb == nil || rb.HasFS || rb.Head() || rb.LvmKey() != ra.LvmKey() || rb.FirstPE != 1 {
		t.Fatalf("second extent %+v %v", rb, err)
	}
	dir := t.TempDir()
	pa, pb := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	_ = os.WriteFile(pa, a.b, 0o600)
	_ = os.WriteFile(pb, b.b, 0o600)
	if f := showFields(t, "debugvmfs6", pa, pb, "show"); f["Label"] != "wide" || f["UUID"] != head.UUIDString() {
		t.Fatalf("debugvmfs6 show: %v", f)
	}
	if f := showFields(t, "debugvmfs6", pa, pb, "show", "lvm"); f["Num. Extents"] != "2" {
		t.Fatalf("debugvmfs6 show lvm: %v", f)
	}
}

// lunOf is a LUN as a rescan leaves it: identity from the wire, VMFS read from its blocks.
func lunOf(t *testing.T, d *memDev, naa string) *Lun {
	v, err := ReadVmfs(d)
	if err != nil {
		t.Fatal(err)
	}
	return &Lun{Canonical: "naa." + naa, NAA: naa, Vmfs: v,
		Ident: LunIdentity{Product: "COMSTAR", BlockSize: 512, Blocks: uint64(len(d.b) / 512)}}
}

func TestSpannedVolumeMountsOnlyWhole(t *testing.T) {
	a, b, _ := spanned(t)
	la, lb := lunOf(t, a, naaA), lunOf(t, b, naaB)
	w := &Host{luns: map[string]*Lun{la.Canonical: la, lb.Canonical: lb}, volumes: map[string]*Volume{}}
	ext, missing := w.spanOf(la)
	if missing != "" || len(ext) != 2 || ext[0] != la || ext[1] != lb || !matchesAll(ext) {
		t.Fatalf("complete volume: %v %q", ext, missing)
	}
	if got := w.unresolvedVolumes(); len(got) != 0 {
		t.Fatalf("a matching spanned volume is not unresolved: %+v", got)
	}
	v := &Volume{Lun: la, Extents: ext}
	if c := v.capacity(); c != volumeCapacity(la, la.Vmfs)+volumeCapacity(lb, lb.Vmfs) {
		t.Fatalf("capacity %d", c)
	}

	// the second LUN is not presented: the volume does not mount and says what is missing
	delete(w.luns, lb.Canonical)
	if _, missing := w.spanOf(la); missing != "extent 1 on naa."+naaB {
		t.Fatalf("missing %q", missing)
	}
	if got := w.unresolvedVolumes(); len(got) != 0 {
		t.Fatalf("an incomplete volume whose extents match is not a snapshot: %+v", got)
	}
	if _, f := w.forceMountExtents([]*Lun{la}); f == nil || !strings.Contains(faultText(f), "is missing extent 1 on naa."+naaB) {
		t.Fatalf("force mount of an incomplete volume: %v", f)
	}

	// a copy of the second extent (another device id): the volume is an unresolved snapshot,
	// and without its second extent also incomplete and not resolvable
	lb.Vmfs.Disk.ID = DeviceIDFor("600144f0b6a1c6b0000051a4d5e2ffff", "COMSTAR")
	w.luns[lb.Canonical] = lb
	got := w.unresolvedVolumes()
	if len(got) != 1 || got[0].VmfsLabel != "wide" || len(got[0].Extent) != 2 || !got[0].ResolveStatus.Resolvable ||
		!got[0].Extent[0].IsHeadExtent || got[0].Extent[1].Ordinal != 1 || got[0].Extent[1].StartBlock != got[0].Extent[0].EndBlock+1 {
		t.Fatalf("snapshot spanned volume: %+v", got)
	}
	la.Vmfs.Disk.ID = DeviceIDFor("600144f0b6a1c6b0000051a4d5e2fffe", "COMSTAR")
	delete(w.luns, lb.Canonical)
	got = w.unresolvedVolumes()
	if len(got) != 1 || got[0].ResolveStatus.Resolvable || got[0].ResolveStatus.IncompleteExtents == nil ||
		!*got[0].ResolveStatus.IncompleteExtents {
		t.Fatalf("incomplete snapshot: %+v", got)
	}
}
