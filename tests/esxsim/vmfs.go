package main

// On-LUN layout (docs/vmfs.md has the sources and the checks against vmfs-tools,
// vmfs6-tools and real images; esxdr/vmfs/ reads and writes the same bytes):
//
//   LBA 0          protective MBR
//   LBA 1..33      primary GPT (one partition, type VMFS, starting at LBA 2048)
//   P = 2048*bs    partition start (P = 0 for a bare volume without GPT)
//   P + 0x100000   LVM device header: magic 0xC001D00D, major, SCSI_DiskId at +0x0C, dataOffset
//                  u64 at +0x7A; then the volume table (LVM UUID, this device's 256 MiB physical
//                  extents, number of devices), the device table (head only) and the PE map
//   V = P + dataOffset (default 0x1100000)
//   V + 0x200000   FS3 descriptor (head extent): magic 0x2FABF15E, major, uuid at +0x09, label at +0x1D
//   V + 0x300000   heartbeats; V + 7 MiB the FDC (inodes), V + 8 MiB the root directory
//   V + 0x900000   esxsim file directory: "ESXSIMD1", u32 version, u32 flags, u64 length, JSON
//
// A volume may span several LUNs (extents); only the head holds the FS3 descriptor and the
// file directory.

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
	"time"
	"unicode/utf16"
)

const (
	lvmMagic          = 0xC001D00D
	fs3Magic          = 0x2FABF15E
	lvmOffset         = 0x100000
	defaultDataOffset = 0x1100000
	fs3Offset         = 0x200000
	peSize            = 256 << 20
	fileBlock         = 1 << 20
	fsBlocks          = 9 // heartbeats, FDC and root directory: the first 9 MiB of the volume
	dirOffset         = fsBlocks * fileBlock
	dirMagic          = "ESXSIMD1"
	gptPartLBA        = 2048
	minLunBytes       = gptPartLBA*512 + defaultDataOffset + dirOffset + 0x100000
	maxExtents        = 32
	vtEntry           = 0x200
	sdEntry           = 0x100
	peEntry           = 0x80
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

// DiskID is the LVM header's SCSI_DiskId. ID holds id[:len] as raw bytes.
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

// VmfsInfo is what esxsim reads from (and writes to) one LUN: its LVM extent and, on the
// head extent, the filesystem's identity.
type VmfsInfo struct {
	PartStart   int64
	HasGPT      bool
	LvmMajor    uint32
	Disk        DiskID
	DataOffset  uint64
	DeviceBytes uint64
	DeviceUUID  [16]byte
	// the logical volume; HasVT is false for headers written without a volume table
	HasVT       bool
	LvmUUID     [16]byte
	VolumeBytes uint64
	FirstPE     uint64
	LastPE      uint64
	NumDevices  uint32
	DeviceNames []string // head only: "naa.<hex>:1" per extent, in order
	HasFS       bool     // the FS3 descriptor was found (head extent)
	FsMajor     uint32
	UUID        [16]byte
	Label       string
}

// UUIDString formats the VMFS UUID as ESXi does: 8-8-4-12 hex.
func (v *VmfsInfo) UUIDString() string { return formatVmfsUUID(v.UUID) }

// LvmKey groups the extents of one logical volume.
func (v *VmfsInfo) LvmKey() string {
	if !v.HasVT {
		return "fs:" + v.UUIDString()
	}
	return formatVmfsUUID(v.LvmUUID)
}

// Head tells whether this extent holds the volume's logical offset 0 (and so its FS3 descriptor).
func (v *VmfsInfo) Head() bool { return !v.HasVT || v.FirstPE == 0 }

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

// VolumeStart is the byte offset of the VMFS volume (FS3 area) on the head LUN.
func (v *VmfsInfo) VolumeStart() int64 { return v.PartStart + int64(v.DataOffset) }

func productPrefix(product string) string {
	p := strings.TrimSpace(product)
	if len(p) > 6 {
		p = p[:6]
	}
	return p
}

// DeviceIDFor is the device id ESXi stores for an NAA LUN: the NAA designator as binary bytes
// followed by the first 6 characters of the product id (docs/vmfs.md).
func DeviceIDFor(naa, product string) string {
	raw, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(naa), "naa."))
	if err != nil || len(raw) == 0 {
		return strings.ToLower(naa) + productPrefix(product)
	}
	return string(raw) + productPrefix(product)
}

// PrintableDeviceID renders a stored id for messages and JSON: hex when it is not text.
func PrintableDeviceID(id string) string {
	for _, c := range []byte(id) {
		if c < 0x20 || c > 0x7e {
			return "0x" + hex.EncodeToString([]byte(id))
		}
	}
	return id
}

// MatchesLun tells whether the stored device id names this LUN: the binary form ESXi writes,
// or the NAA as hex text (with or without the product characters) that esxsim and esxdr wrote
// before, so that older lab images keep their meaning.
func (v *VmfsInfo) MatchesLun(naa, product string) bool {
	if naa == "" {
		return false
	}
	id := strings.TrimRight(v.Disk.ID, "\x00")
	if id == DeviceIDFor(naa, product) {
		return true
	}
	text := strings.TrimRight(id, " ")
	n := strings.ToLower(strings.TrimPrefix(strings.ToLower(naa), "naa."))
	if !strings.HasPrefix(strings.ToLower(text), n) {
		return false
	}
	rest := text[len(n):]
	return rest == "" || rest == productPrefix(product)
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

// lvmLayout gives the offsets (from P + lvmOffset) of the volume table, device (SD) table,
// PE bitmap and PE table of LVM_DeviceHeader.
func lvmLayout(major uint32, mdAlignment uint32) (vt, sd, bitmap, table int64) {
	md, volumes, bm := int64(0x200), int64(512), int64(0x400)
	if major >= 6 {
		md = int64(mdAlignment)
		if md == 0 {
			md = 0x1000
		}
		volumes = 1
		if md > bm {
			bm = md
		}
	}
	reserved := (1024-volumes)*512 - sdEntry*maxExtents
	vt = md
	sd = md + volumes*vtEntry + reserved
	bitmap = sd + sdEntry*maxExtents
	table = bitmap + bm
	return
}

// ReadVmfs looks for the LVM header (GPT partition, else bare) and, on the head extent, the FS3
// descriptor. It returns nil, nil when the LUN holds no VMFS; a non-head extent comes back with
// HasFS false.
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
		if n := int(v.Disk.Len); n > 0 && n <= 44 {
			v.Disk.ID = string(lvm[0x2E : 0x2E+n])
		} else {
			v.Disk.ID = cstr(lvm[0x2E:0x5A]) // headers that left len at 0
		}
		v.DeviceBytes = binary.LittleEndian.Uint64(lvm[0x5E:0x66])
		numPEs := binary.LittleEndian.Uint32(lvm[0x6A:0x6E])
		v.DataOffset = binary.LittleEndian.Uint64(lvm[0x7A:0x82])
		copy(v.DeviceUUID[:], lvm[0x82:0x92])
		vtOff, sdOff, _, tableOff := lvmLayout(v.LvmMajor, binary.LittleEndian.Uint32(lvm[0xCA:0xCE]))
		headLogical := int64(-1)
		headPhysical := int64(0)
		if p+lvmOffset+tableOff+peEntry <= d.Size() {
			vt, err := d.ReadAt(p+lvmOffset+vtOff, vtEntry)
			if err != nil {
				return nil, err
			}
			if !bytes.Equal(vt[0x54:0x64], make([]byte, 16)) {
				v.HasVT = true
				copy(v.LvmUUID[:], vt[0x54:0x64])
				v.VolumeBytes = binary.LittleEndian.Uint64(vt[0:8])
				v.FirstPE = binary.LittleEndian.Uint64(vt[0x78:0x80])
				v.LastPE = binary.LittleEndian.Uint64(vt[0x80:0x88])
				v.NumDevices = binary.LittleEndian.Uint32(vt[0x90:0x94])
				if numPEs == 0 {
					numPEs = 1
				}
				if numPEs > 4 {
					numPEs = 4
				}
				table, err := d.ReadAt(p+lvmOffset+tableOff, int(numPEs)*peEntry)
				if err != nil {
					return nil, err
				}
				for i := 0; i < int(numPEs); i++ {
					e := table[i*peEntry:]
					if e[0] == 0 {
						continue
					}
					physical := int64(binary.LittleEndian.Uint64(e[9:17]))
					logical := int64(binary.LittleEndian.Uint64(e[17:25]))
					length := int64(binary.LittleEndian.Uint64(e[25:33]))
					if logical <= fs3Offset && fs3Offset < logical+length {
						headLogical, headPhysical = logical, physical
					}
				}
				if v.FirstPE == 0 && v.LvmMajor >= 5 && v.NumDevices > 0 && v.NumDevices <= maxExtents {
					sd, err := d.ReadAt(p+lvmOffset+sdOff, int(v.NumDevices)*sdEntry)
					if err != nil {
						return nil, err
					}
					for i := 0; i < int(v.NumDevices); i++ {
						v.DeviceNames = append(v.DeviceNames, cstr(sd[i*sdEntry:(i+1)*sdEntry]))
					}
				}
			}
		}
		if !v.Head() {
			return v, nil // an extent of a spanned volume: no filesystem here
		}
		if headLogical == 0 && headPhysical > 0 {
			v.DataOffset = uint64(headPhysical)
		}
		if v.DataOffset == 0 || int64(v.DataOffset)+p+dirOffset+0x200 > d.Size() {
			v.DataOffset = defaultDataOffset
		}
		fs, err := d.ReadAt(v.VolumeStart()+fs3Offset, 0x200)
		if err != nil {
			return nil, err
		}
		if binary.LittleEndian.Uint32(fs[0:4]) != fs3Magic {
			// writers that took the volume to start at the partition (V = P)
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
		v.HasFS = true
		v.FsMajor = binary.LittleEndian.Uint32(fs[4:8])
		copy(v.UUID[:], fs[0x09:0x19])
		v.Label = cstr(fs[0x1D : 0x1D+128])
		return v, nil
	}
	return nil, nil
}

func padStr(dst []byte, s string) {
	n := copy(dst, s)
	for i := n; i < len(dst); i++ {
		dst[i] = ' '
	}
}

// volumeLayout fills in what a single-LUN (or head-only rewrite) volume needs from the device
// size: the physical extents this device holds and the volume's size. It keeps what is set.
func volumeLayout(d blockIO, v *VmfsInfo) {
	if v.DataOffset == 0 {
		v.DataOffset = defaultDataOffset
	}
	if v.DeviceBytes == 0 {
		v.DeviceBytes = uint64(d.Size() - v.PartStart)
		if v.HasGPT {
			v.DeviceBytes -= 34 * uint64(d.BlockSize())
		}
	}
	if !v.HasVT {
		v.HasVT = true
		_, _ = rand.Read(v.LvmUUID[:])
		v.NumDevices = 1
	}
	if v.VolumeBytes == 0 {
		usable := v.DeviceBytes - v.DataOffset
		pes := usable / peSize
		v.FirstPE, v.LastPE = 0, 0
		if pes > 0 {
			v.LastPE = pes - 1
			v.VolumeBytes = pes * peSize
		} else {
			v.VolumeBytes = usable / fileBlock * fileBlock
		}
	}
	if v.NumDevices == 0 {
		v.NumDevices = 1
	}
	if v.DeviceUUID == [16]byte{} {
		_, _ = rand.Read(v.DeviceUUID[:])
	}
}

// WriteHeaders writes the LVM metadata of this extent and, on the head, the FS3 descriptor
// (not the GPT, nor the filesystem metadata: see WriteFilesystem).
func WriteHeaders(d blockIO, v *VmfsInfo) error {
	volumeLayout(d, v)
	now := uint64(time.Now().UnixNano() / 1000)
	numPEs := v.LastPE - v.FirstPE + 1
	extentBytes := v.DeviceBytes - v.DataOffset
	if v.LastPE > v.FirstPE || extentBytes >= peSize {
		extentBytes = numPEs * peSize
	} else {
		extentBytes = extentBytes / fileBlock * fileBlock
	}
	md := uint32(0x1000)
	if v.LvmMajor < 6 {
		md = 0
	}
	vtOff, sdOff, bitmapOff, tableOff := lvmLayout(v.LvmMajor, md)
	// LVM6 maps a device with one PE descriptor, LVM5 with one per 256 MiB.
	type pe struct{ logical, physical, length uint64 }
	var pes []pe
	if v.LvmMajor >= 6 {
		pes = []pe{{v.FirstPE * peSize, v.DataOffset, extentBytes}}
	} else {
		for i := uint64(0); i < numPEs; i++ {
			n := uint64(peSize)
			if extentBytes-i*peSize < n {
				n = extentBytes - i*peSize
			}
			pes = append(pes, pe{(v.FirstPE + i) * peSize, v.DataOffset + i*peSize, n})
		}
	}
	h := make([]byte, 0x200)
	binary.LittleEndian.PutUint32(h[0:4], lvmMagic)
	binary.LittleEndian.PutUint32(h[4:8], v.LvmMajor)
	binary.LittleEndian.PutUint32(h[8:12], 21)
	h[0x0C] = v.Disk.Type
	h[0x0D] = byte(len(v.Disk.ID))
	binary.LittleEndian.PutUint16(h[0x0E:0x10], v.Disk.Lun)
	h[0x10] = v.Disk.DevType
	h[0x11] = v.Disk.ScsiLevel
	padStr(h[0x12:0x1A], v.Disk.Vendor)
	padStr(h[0x1A:0x2A], v.Disk.Model)
	padStr(h[0x2A:0x2E], v.Disk.Rev)
	copy(h[0x2E:0x5A], v.Disk.ID)
	binary.LittleEndian.PutUint32(h[0x5A:], 512)
	binary.LittleEndian.PutUint64(h[0x5E:], v.DeviceBytes)
	binary.LittleEndian.PutUint32(h[0x66:], 1)
	binary.LittleEndian.PutUint32(h[0x6A:], uint32(len(pes)))
	binary.LittleEndian.PutUint32(h[0x6E:], uint32(len(pes)-1))
	binary.LittleEndian.PutUint64(h[0x72:], 1)
	binary.LittleEndian.PutUint64(h[0x7A:], v.DataOffset)
	copy(h[0x82:0x92], v.DeviceUUID[:])
	binary.LittleEndian.PutUint64(h[0x92:], now)
	binary.LittleEndian.PutUint64(h[0x9A:], now)
	if v.LvmMajor >= 6 {
		binary.LittleEndian.PutUint32(h[0xCA:], md)
		binary.LittleEndian.PutUint32(h[0xCE:], uint32(numPEs))
	} else {
		binary.LittleEndian.PutUint32(h[0xBE:], 1)
	}
	vt := make([]byte, vtEntry)
	binary.LittleEndian.PutUint64(vt[0:], v.VolumeBytes)
	binary.LittleEndian.PutUint64(vt[8:], 1)
	binary.LittleEndian.PutUint32(vt[0x10:], 1) // state: normal
	copy(vt[0x14:0x54], formatVmfsUUID(v.LvmUUID))
	copy(vt[0x54:0x64], v.LvmUUID[:])
	binary.LittleEndian.PutUint32(vt[0x64:], 1)
	binary.LittleEndian.PutUint64(vt[0x68:], now)
	binary.LittleEndian.PutUint32(vt[0x74:], uint32(numPEs))
	binary.LittleEndian.PutUint64(vt[0x78:], v.FirstPE)
	binary.LittleEndian.PutUint64(vt[0x80:], v.LastPE)
	binary.LittleEndian.PutUint64(vt[0x88:], now)
	binary.LittleEndian.PutUint32(vt[0x90:], v.NumDevices)
	bitmap := make([]byte, 0x400)
	table := make([]byte, peEntry*len(pes))
	for i, e := range pes {
		bitmap[i/8] |= 1 << uint(i%8)
		t := table[i*peEntry:]
		t[0] = 1
		binary.LittleEndian.PutUint32(t[1:], uint32(i))
		binary.LittleEndian.PutUint64(t[9:], e.physical)
		binary.LittleEndian.PutUint64(t[17:], e.logical)
		binary.LittleEndian.PutUint64(t[25:], e.length)
		binary.LittleEndian.PutUint32(t[33:], 1)
	}
	sd := make([]byte, sdEntry*maxExtents)
	if v.Head() {
		for i, n := range v.DeviceNames {
			copy(sd[i*sdEntry:(i+1)*sdEntry], n)
		}
	}
	base := v.PartStart + lvmOffset
	for _, w := range []struct {
		off  int64
		data []byte
	}{{0, h}, {vtOff, vt}, {sdOff, sd}, {bitmapOff, bitmap}, {tableOff, table}} {
		if err := d.WriteAt(base+w.off, w.data); err != nil {
			return err
		}
	}
	if !v.Head() {
		return nil
	}
	fs := make([]byte, 0x200)
	binary.LittleEndian.PutUint32(fs[0:4], fs3Magic)
	binary.LittleEndian.PutUint32(fs[4:8], v.FsMajor)
	fs[8] = 82
	if v.FsMajor == 14 {
		fs[8] = 81
	}
	copy(fs[0x09:0x19], v.UUID[:])
	binary.LittleEndian.PutUint32(fs[0x19:], 0x2) // "public": a volume on shared storage
	copy(fs[0x1D:0x1D+127], v.Label)
	binary.LittleEndian.PutUint32(fs[0x9D:], 512)
	binary.LittleEndian.PutUint64(fs[0xA1:], fileBlock)
	binary.LittleEndian.PutUint32(fs[0xA9:], uint32(now/1000000))
	copy(fs[0xB1:0xC1], v.LvmUUID[:])
	binary.LittleEndian.PutUint32(fs[0xC1:], 1)
	binary.LittleEndian.PutUint32(fs[0xD1:], fdcHeader)
	binary.LittleEndian.PutUint32(fs[0xD5:], 1)
	binary.LittleEndian.PutUint32(fs[0xD9:], fsLayoutFor(v.FsMajor).subblock)
	return d.WriteAt(v.VolumeStart()+fs3Offset, fs)
}

// The filesystem metadata readers open (vmfs6-tools for VMFS6, vmfs-tools for VMFS5): the FDC
// with its bitmap header and entry, the inodes of the root directory and the system files, and
// the root directory. The resource files hold a header and no resources, inside their inodes.
type fsLayout struct {
	mdh, inode, blocksAt, blockAddr, residentAt, bitmapEntry, fdcBlock, subblock uint32
}

const (
	fdcHeader   = 0x10000
	fdcItems    = 64
	inodeMagic  = 0x10C00001
	fdcMagic    = 0x10C00005
	residentZLA = 4301 + 4
)

func fsLayoutFor(major uint32) fsLayout {
	if major == 14 {
		return fsLayout{0x200, 0x800, 0x400, 4, 0x400, 0x400, 4, 0x2000}
	}
	return fsLayout{0x1000, 0x2000, 0x1600, 8, 0x1200, 0x2000, 7, 0x10000}
}

func (l fsLayout) fb(n uint64) uint64 {
	if l.blockAddr == 8 { // VMFS6: 9 low bits at 51, the next 17 at 15
		return (n&0x1FF)<<51 | ((n>>9)&0x1FFFF)<<15 | 1
	}
	return n<<6 | 1
}

func fdAddr(item uint32) uint32 { return item<<22 | 4 }

var systemFiles = []struct {
	name  string
	item  uint32
	magic uint32
}{{".fbb.sf", 1, 0x10C00002}, {".fdc.sf", 2, fdcMagic}, {".pbc.sf", 3, 0x10C00004},
	{".sbc.sf", 4, 0x10C00003}, {".vh.sf", 5, 0}, {".pb2.sf", 6, 0x10C00006}}

func bitmapHeader(l fsLayout, itemsPerEntry, entriesPerArea, hdr, data, total, areas uint32) []byte {
	b := make([]byte, 0x200)
	area := entriesPerArea*l.bitmapEntry + itemsPerEntry*entriesPerArea*data
	for i, x := range []uint32{itemsPerEntry, entriesPerArea, hdr, data, area, total, areas} {
		binary.LittleEndian.PutUint32(b[i*4:], x)
	}
	return b
}

func inodeBytes(l fsLayout, item uint32, pos uint64, ftype, mode uint32, size uint64, now uint32, blocks []uint64, content []byte, nlink uint32) []byte {
	b := make([]byte, l.inode)
	binary.LittleEndian.PutUint32(b[0:], inodeMagic)
	binary.LittleEndian.PutUint64(b[4:], pos)
	o := b[l.mdh:]
	zla := uint32(1)
	if content != nil {
		zla = residentZLA
	}
	binary.LittleEndian.PutUint32(o[0:], fdAddr(item))
	binary.LittleEndian.PutUint32(o[4:], 1)
	binary.LittleEndian.PutUint32(o[8:], nlink)
	binary.LittleEndian.PutUint32(o[12:], ftype)
	binary.LittleEndian.PutUint64(o[0x14:], size)
	binary.LittleEndian.PutUint64(o[0x1C:], fileBlock)
	binary.LittleEndian.PutUint64(o[0x24:], uint64(len(blocks)))
	binary.LittleEndian.PutUint32(o[0x2C:], now)
	binary.LittleEndian.PutUint32(o[0x30:], now)
	binary.LittleEndian.PutUint32(o[0x34:], now)
	binary.LittleEndian.PutUint32(o[0x40:], mode)
	binary.LittleEndian.PutUint32(o[0x44:], zla)
	if content != nil {
		copy(b[l.residentAt:], content)
	}
	for i, a := range blocks {
		if l.blockAddr == 8 {
			binary.LittleEndian.PutUint64(b[l.blocksAt+uint32(i)*8:], a)
		} else {
			binary.LittleEndian.PutUint32(b[l.blocksAt+uint32(i)*4:], uint32(a))
		}
	}
	return b
}

func rootDirectory(l fsLayout) []byte {
	type ent struct {
		name  string
		ftype uint32
		addr  uint32
	}
	var files []ent
	for _, f := range systemFiles {
		files = append(files, ent{f.name, 5, fdAddr(f.item)})
	}
	if l.blockAddr == 8 {
		// VMFS6 (vmfs6-tools): "." and ".." at 0x3b8, one flag nibble per 4 KiB page at 0x10040
		// (1 in use, 8 end), entries of 0x120 bytes from 0x11040.
		d := make([]byte, 0x12000)
		put := func(at int, e ent) {
			binary.LittleEndian.PutUint32(d[at:], e.ftype)
			binary.LittleEndian.PutUint32(d[at+4:], e.addr)
			binary.LittleEndian.PutUint32(d[at+8:], 1)
			binary.LittleEndian.PutUint64(d[at+16:], uint64(at))
			copy(d[at+0x18:at+0x98], e.name)
		}
		put(0x3B8, ent{".", 2, fdAddr(0)})
		put(0x3B8+0x120, ent{"..", 2, fdAddr(0)})
		d[0x10040] = 0x01
		for i := 0x10041; i < 0x10080; i++ {
			d[i] = 0x88
		}
		for i, e := range files {
			put(0x11040+i*0x120, e)
		}
		return d
	}
	all := append([]ent{{".", 2, fdAddr(0)}, {"..", 2, fdAddr(0)}}, files...)
	d := make([]byte, 0x8C*len(all))
	for i, e := range all {
		binary.LittleEndian.PutUint32(d[i*0x8C:], e.ftype)
		binary.LittleEndian.PutUint32(d[i*0x8C+4:], e.addr)
		binary.LittleEndian.PutUint32(d[i*0x8C+8:], 1)
		copy(d[i*0x8C+12:i*0x8C+12+128], e.name)
	}
	return d
}

// WriteFilesystem writes the filesystem metadata of a new volume on its head extent.
func WriteFilesystem(d blockIO, v *VmfsInfo) error {
	l := fsLayoutFor(v.FsMajor)
	now := uint32(time.Now().Unix())
	V := uint64(v.VolumeStart())
	fdc := uint64(l.fdcBlock) * fileBlock
	root := fdc + fileBlock
	item0 := fdc + fdcHeader + uint64(l.bitmapEntry)
	fdcSize := uint64(fdcHeader + l.bitmapEntry + fdcItems*l.inode)
	used := uint32(1 + len(systemFiles))
	bme := make([]byte, l.bitmapEntry)
	binary.LittleEndian.PutUint32(bme[0:], fdcMagic)
	binary.LittleEndian.PutUint64(bme[4:], fdc+fdcHeader)
	binary.LittleEndian.PutUint32(bme[l.mdh+4:], fdcItems)
	binary.LittleEndian.PutUint32(bme[l.mdh+8:], fdcItems-used)
	binary.LittleEndian.PutUint32(bme[l.mdh+12:], used)
	for i := used; i < fdcItems; i++ { // a set bit is a free slot
		bme[l.mdh+16+i/8] |= 1 << (i % 8)
	}
	dir := rootDirectory(l)
	writes := []struct {
		off  uint64
		data []byte
	}{
		{fdc, bitmapHeader(l, fdcItems, 1, fdcHeader, l.inode, fdcItems, 1)},
		{fdc + fdcHeader, bme},
		{root, dir},
		{item0, inodeBytes(l, 0, item0, 2, 0o1755, uint64(len(dir)), now, []uint64{l.fb(uint64(l.fdcBlock) + 1)}, nil, 2)},
	}
	for _, f := range systemFiles {
		pos := item0 + uint64(f.item*l.inode)
		var ino []byte
		switch f.name {
		case ".fdc.sf":
			ino = inodeBytes(l, f.item, pos, 5, 0o400, fdcSize, now, []uint64{l.fb(uint64(l.fdcBlock))}, nil, 1)
		case ".vh.sf":
			var blocks []uint64
			for n := uint64(0); n < uint64(l.fdcBlock); n++ {
				blocks = append(blocks, l.fb(n))
			}
			ino = inodeBytes(l, f.item, pos, 5, 0o400, fdc, now, blocks, nil, 1)
		default:
			data := l.subblock
			if f.magic == 0x10C00002 {
				data = fileBlock
			}
			hdr := bitmapHeader(l, 8, 1, 0x200, data, 0, 0)
			ino = inodeBytes(l, f.item, pos, 5, 0o400, uint64(len(hdr)), now, nil, hdr, 1)
		}
		writes = append(writes, struct {
			off  uint64
			data []byte
		}{pos, ino})
	}
	for _, w := range writes {
		if err := d.WriteAt(int64(V+w.off), w.data); err != nil {
			return err
		}
	}
	return nil
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
