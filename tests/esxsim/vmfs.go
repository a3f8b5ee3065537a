package main

// On-LUN layout (documented in docs/esxsim.md):
//
//   LBA 0          protective MBR
//   LBA 1..33      primary GPT (one partition, type VMFS, starting at LBA 2048)
//   P = 2048*bs    partition start (P = 0 for a bare volume without GPT)
//   P + 0x100000   LVM header: magic 0xC001D00D, major, SCSI_DiskId at +0x0C, dataOffset u64 at +0x7A
//   V = P + dataOffset (default dataOffset 0x1100000, so V = P + 0x1100000)
//   V + 0x200000   FS3 descriptor: magic 0x2FABF15E, major, uuid at +0x09, label[128] at +0x1D
//   V + 0x400000   esxsim file directory: "ESXSIMD1", u32 version, u32 flags, u64 length, JSON

import (
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"unicode/utf16"
)

const (
	lvmMagic          = 0xC001D00D
	fs3Magic          = 0x2FABF15E
	lvmOffset         = 0x100000
	defaultDataOffset = 0x1100000
	fs3Offset         = 0x200000
	dirOffset         = 0x400000
	dirMagic          = "ESXSIMD1"
	gptPartLBA        = 2048
	minLunBytes       = gptPartLBA*512 + defaultDataOffset + dirOffset + 0x100000
)

// VMFS partition type GUID AA31E02A-400F-11DB-9590-000C2911D1B8.
var vmfsTypeGUID = guidBytes("AA31E02A-400F-11DB-9590-000C2911D1B8")

func sha1Sum(b []byte) []byte {
	h := sha1.Sum(b)
	return h[:]
}

// guidBytes encodes a GUID string in the GPT mixed-endian layout.
func guidBytes(s string) []byte {
	h, _ := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	out := make([]byte, 16)
	out[0], out[1], out[2], out[3] = h[3], h[2], h[1], h[0]
	out[4], out[5] = h[5], h[4]
	out[6], out[7] = h[7], h[6]
	copy(out[8:], h[8:])
	return out
}

// DiskID is the LVM header's SCSI_DiskId.
type DiskID struct {
	Type      byte
	Len       byte
	Lun       uint16
	DevType   byte
	ScsiLevel byte
	Vendor    string
	Model     string
	Rev       string
	ID        string
}

// VmfsInfo is what esxsim reads from (and writes to) a LUN.
type VmfsInfo struct {
	PartStart  int64
	HasGPT     bool
	LvmMajor   uint32
	Disk       DiskID
	DataOffset uint64
	FsMajor    uint32
	UUID       [16]byte
	Label      string
}

// UUIDString formats the VMFS UUID as ESXi does: 8-8-4-12 hex.
func (v *VmfsInfo) UUIDString() string { return formatVmfsUUID(v.UUID) }

func formatVmfsUUID(u [16]byte) string {
	return fmt.Sprintf("%08x-%08x-%04x-%s",
		binary.LittleEndian.Uint32(u[0:4]), binary.LittleEndian.Uint32(u[4:8]),
		binary.LittleEndian.Uint16(u[8:10]), hex.EncodeToString(u[10:16]))
}

func parseVmfsUUID(s string) ([16]byte, error) {
	var u [16]byte
	parts := strings.Split(s, "-")
	if len(parts) != 4 || len(parts[0]) != 8 || len(parts[1]) != 8 || len(parts[2]) != 4 || len(parts[3]) != 12 {
		return u, fmt.Errorf("bad VMFS UUID %q", s)
	}
	a, e1 := hex.DecodeString(parts[0])
	b, e2 := hex.DecodeString(parts[1])
	c, e3 := hex.DecodeString(parts[2])
	d, e4 := hex.DecodeString(parts[3])
	if e1 != nil || e2 != nil || e3 != nil || e4 != nil {
		return u, fmt.Errorf("bad VMFS UUID %q", s)
	}
	binary.LittleEndian.PutUint32(u[0:4], binary.BigEndian.Uint32(a))
	binary.LittleEndian.PutUint32(u[4:8], binary.BigEndian.Uint32(b))
	binary.LittleEndian.PutUint16(u[8:10], binary.BigEndian.Uint16(c))
	copy(u[10:], d)
	return u, nil
}

func newVmfsUUID(mac string) [16]byte {
	var u [16]byte
	_, _ = rand.Read(u[:])
	if m, err := hex.DecodeString(strings.ReplaceAll(mac, ":", "")); err == nil && len(m) == 6 {
		copy(u[10:], m)
	}
	return u
}

// VolumeStart is the byte offset of the VMFS volume (FS3 area) on the LUN.
func (v *VmfsInfo) VolumeStart() int64 { return v.PartStart + int64(v.DataOffset) }

// DeviceIDFor is the device id esxsim stores for an NAA LUN: the NAA in lowercase
// hex followed by the first 6 characters of the product id.
func DeviceIDFor(naa, product string) string {
	p := strings.TrimSpace(product)
	if len(p) > 6 {
		p = p[:6]
	}
	return strings.ToLower(naa) + p
}

// MatchesLun tells whether the stored device id names this LUN.
func (v *VmfsInfo) MatchesLun(naa, product string) bool {
	id := strings.TrimRight(v.Disk.ID, "\x00 ")
	naa = strings.ToLower(naa)
	if naa == "" || !strings.HasPrefix(strings.ToLower(id), naa) {
		return false
	}
	rest := id[len(naa):]
	if rest == "" {
		return true
	}
	p := strings.TrimSpace(product)
	if len(p) > 6 {
		p = p[:6]
	}
	return rest == p
}

func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.TrimRight(string(b), " ")
}

// blockIO is a LUN opened through iSCSI.
type blockIO interface {
	ReadAt(off int64, n int) ([]byte, error)
	WriteAt(off int64, data []byte) error
	Size() int64
	BlockSize() int
}

// ReadVmfs looks for the LVM header (GPT partition, else bare) and the FS3 descriptor.
// It returns nil, nil when the LUN holds no VMFS.
func ReadVmfs(d blockIO) (*VmfsInfo, error) {
	bs := int64(d.BlockSize())
	var candidates []int64
	gpt := false
	if hdr, err := d.ReadAt(bs, 92); err == nil && string(hdr[0:8]) == "EFI PART" {
		entLBA := int64(binary.LittleEndian.Uint64(hdr[72:80]))
		if ent, err := d.ReadAt(entLBA*bs, 128); err == nil {
			first := int64(binary.LittleEndian.Uint64(ent[32:40]))
			if first > 0 {
				candidates = append(candidates, first*bs)
				gpt = true
			}
		}
	}
	candidates = append(candidates, 0)
	for _, p := range candidates {
		if p+lvmOffset+0x200 > d.Size() {
			continue
		}
		lvm, err := d.ReadAt(p+lvmOffset, 0x200)
		if err != nil {
			return nil, err
		}
		if binary.LittleEndian.Uint32(lvm[0:4]) != lvmMagic {
			continue
		}
		v := &VmfsInfo{PartStart: p, HasGPT: gpt && p != 0}
		v.LvmMajor = binary.LittleEndian.Uint32(lvm[4:8])
		v.Disk = DiskID{
			Type: lvm[0x0C], Len: lvm[0x0D], Lun: binary.LittleEndian.Uint16(lvm[0x0E:0x10]),
			DevType: lvm[0x10], ScsiLevel: lvm[0x11],
			Vendor: cstr(lvm[0x12:0x1A]), Model: cstr(lvm[0x1A:0x2A]), Rev: cstr(lvm[0x2A:0x2E]),
		}
		idLen := int(v.Disk.Len)
		if idLen == 0 || idLen > 44 {
			idLen = 44
		}
		v.Disk.ID = cstr(lvm[0x2E : 0x2E+idLen])
		v.DataOffset = binary.LittleEndian.Uint64(lvm[0x7A:0x82])
		if v.DataOffset == 0 || int64(v.DataOffset)+p+dirOffset+0x200 > d.Size() {
			v.DataOffset = defaultDataOffset
		}
		fs, err := d.ReadAt(v.VolumeStart()+fs3Offset, 0x200)
		if err != nil {
			return nil, err
		}
		if binary.LittleEndian.Uint32(fs[0:4]) != fs3Magic {
			// writers that take the volume to start at the partition (V = P)
			alt, err := d.ReadAt(p+fs3Offset, 0x200)
			if err != nil {
				return nil, err
			}
			if binary.LittleEndian.Uint32(alt[0:4]) != fs3Magic {
				return nil, fmt.Errorf("LVM header found at 0x%x but no FS3 descriptor at 0x%x", p+lvmOffset, v.VolumeStart()+fs3Offset)
			}
			fs = alt
			v.DataOffset = 0
		}
		v.FsMajor = binary.LittleEndian.Uint32(fs[4:8])
		copy(v.UUID[:], fs[0x09:0x19])
		v.Label = cstr(fs[0x1D : 0x1D+128])
		return v, nil
	}
	return nil, nil
}

func putStr(dst []byte, s string) {
	n := copy(dst, s)
	for i := n; i < len(dst); i++ {
		dst[i] = 0
	}
}

func padStr(dst []byte, s string) {
	n := copy(dst, s)
	for i := n; i < len(dst); i++ {
		dst[i] = ' '
	}
}

// WriteHeaders writes the LVM header and the FS3 descriptor (not the GPT).
func WriteHeaders(d blockIO, v *VmfsInfo) error {
	lvm := make([]byte, 0x200)
	binary.LittleEndian.PutUint32(lvm[0:4], lvmMagic)
	binary.LittleEndian.PutUint32(lvm[4:8], v.LvmMajor)
	lvm[0x0C] = v.Disk.Type
	lvm[0x0D] = byte(len(v.Disk.ID))
	binary.LittleEndian.PutUint16(lvm[0x0E:0x10], v.Disk.Lun)
	lvm[0x10] = v.Disk.DevType
	lvm[0x11] = v.Disk.ScsiLevel
	padStr(lvm[0x12:0x1A], v.Disk.Vendor)
	padStr(lvm[0x1A:0x2A], v.Disk.Model)
	padStr(lvm[0x2A:0x2E], v.Disk.Rev)
	putStr(lvm[0x2E:0x5A], v.Disk.ID)
	binary.LittleEndian.PutUint64(lvm[0x7A:0x82], v.DataOffset)
	if err := d.WriteAt(v.PartStart+lvmOffset, lvm); err != nil {
		return err
	}
	fs := make([]byte, 0x200)
	binary.LittleEndian.PutUint32(fs[0:4], fs3Magic)
	binary.LittleEndian.PutUint32(fs[4:8], v.FsMajor)
	copy(fs[0x09:0x19], v.UUID[:])
	putStr(fs[0x1D:0x1D+128], v.Label)
	return d.WriteAt(v.VolumeStart()+fs3Offset, fs)
}

// WriteGPT writes a protective MBR and primary + backup GPT with one VMFS partition
// from LBA 2048 to the last usable LBA.
func WriteGPT(d blockIO) (first, last int64, err error) {
	bs := int64(d.BlockSize())
	total := d.Size() / bs
	first = gptPartLBA
	last = total - 34
	mbr := make([]byte, bs)
	mbr[446+4] = 0xEE
	binary.LittleEndian.PutUint32(mbr[446+8:], 1)
	sz := total - 1
	if sz > 0xFFFFFFFF {
		sz = 0xFFFFFFFF
	}
	binary.LittleEndian.PutUint32(mbr[446+12:], uint32(sz))
	mbr[510], mbr[511] = 0x55, 0xAA

	entries := make([]byte, 128*128)
	copy(entries[0:16], vmfsTypeGUID)
	uniq := make([]byte, 16)
	_, _ = rand.Read(uniq)
	copy(entries[16:32], uniq)
	binary.LittleEndian.PutUint64(entries[32:40], uint64(first))
	binary.LittleEndian.PutUint64(entries[40:48], uint64(last))
	for i, r := range utf16.Encode([]rune("esxsim VMFS")) {
		binary.LittleEndian.PutUint16(entries[56+2*i:], r)
	}
	entCRC := crc32.ChecksumIEEE(entries)
	diskGUID := make([]byte, 16)
	_, _ = rand.Read(diskGUID)

	header := func(cur, backup, entLBA int64) []byte {
		h := make([]byte, bs)
		copy(h[0:8], "EFI PART")
		binary.LittleEndian.PutUint32(h[8:12], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:16], 92)
		binary.LittleEndian.PutUint64(h[24:32], uint64(cur))
		binary.LittleEndian.PutUint64(h[32:40], uint64(backup))
		binary.LittleEndian.PutUint64(h[40:48], 34)
		binary.LittleEndian.PutUint64(h[48:56], uint64(total-34))
		copy(h[56:72], diskGUID)
		binary.LittleEndian.PutUint64(h[72:80], uint64(entLBA))
		binary.LittleEndian.PutUint32(h[80:84], 128)
		binary.LittleEndian.PutUint32(h[84:88], 128)
		binary.LittleEndian.PutUint32(h[88:92], entCRC)
		binary.LittleEndian.PutUint32(h[16:20], crc32.ChecksumIEEE(h[0:92]))
		return h
	}
	primary := append(append(append([]byte{}, mbr...), header(1, total-1, 2)...), entries...)
	if err = d.WriteAt(0, primary); err != nil {
		return
	}
	backup := append(append([]byte{}, entries...), header(total-1, 1, total-33)...)
	err = d.WriteAt((total-33)*bs, backup)
	return
}

// ClearVolume zeroes the directory header so a fresh volume starts empty.
func ClearDirectory(d blockIO, v *VmfsInfo) error {
	return d.WriteAt(v.VolumeStart()+dirOffset, make([]byte, d.BlockSize()))
}

// Directory is the esxsim file directory stored on the volume.
type Directory struct {
	Format     string            `json:"format"`
	Generation int64             `json:"generation"`
	Writer     string            `json:"writer"`
	Dirs       []string          `json:"dirs"`
	Files      map[string]string `json:"files"` // path relative to the volume root -> base64
}

// EncodeDirectory builds the on-disk bytes of a directory.
func EncodeDirectory(dir *Directory) ([]byte, error) {
	js, err := json.Marshal(dir)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 24+len(js))
	copy(out[0:8], dirMagic)
	binary.LittleEndian.PutUint32(out[8:12], 1)
	binary.LittleEndian.PutUint64(out[16:24], uint64(len(js)))
	copy(out[24:], js)
	return out, nil
}

// ReadDirectory reads the directory of a volume (empty if none was written).
func ReadDirectory(d blockIO, v *VmfsInfo) (*Directory, error) {
	hdr, err := d.ReadAt(v.VolumeStart()+dirOffset, 24)
	if err != nil {
		return nil, err
	}
	if string(hdr[0:8]) != dirMagic {
		return &Directory{Format: "esxsim-dir-1", Files: map[string]string{}}, nil
	}
	n := int64(binary.LittleEndian.Uint64(hdr[16:24]))
	if n < 0 || v.VolumeStart()+dirOffset+24+n > d.Size() {
		return nil, errors.New("esxsim directory length beyond the LUN")
	}
	js, err := d.ReadAt(v.VolumeStart()+dirOffset+24, int(n))
	if err != nil {
		return nil, err
	}
	dir := &Directory{}
	if err := json.Unmarshal(js, dir); err != nil {
		return nil, fmt.Errorf("esxsim directory: %v", err)
	}
	if dir.Files == nil {
		dir.Files = map[string]string{}
	}
	return dir, nil
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
