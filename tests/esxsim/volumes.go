package main

// VMFS volumes: mount when the stored device id matches the LUN, otherwise list as
// unresolved; resignature, force-mount, create, unmount. Datastore files live in a
// working directory and are synced to the LUN's esxsim directory area.
//
// A volume may span several LUNs. It mounts when every extent is there (as many as its
// volume table says, physical extents following each other from the head) and every
// extent's device id matches its LUN. An incomplete volume is not mounted: an event names
// the missing device; it is listed as unresolved only when an extent is a copy too (then
// with incompleteExtents and not resolvable).

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// Volume is a mounted VMFS datastore.
type Volume struct {
	UUID         string
	Label        string
	Lun          *Lun   // the head extent
	Extents      []*Lun // every extent, head first (ordinal order)
	Info         VmfsInfo
	DS           *simulator.Datastore
	ForceMounted bool
	Inaccessible bool
	lastHash     string
	generation   int64
}

// Dir is the working directory (relative to the data dir, which is the cwd).
func (v *Volume) Dir() string { return "ds:/vmfs/volumes/" + v.UUID }

func (v *Volume) URL() string { return "ds:///vmfs/volumes/" + v.UUID + "/" }

var syncMu sync.Mutex

// maxSyncedFile bounds the size of one file kept on the LUN; larger files are skipped.
const maxSyncedFile = 1 << 20

func vmfsMajor(info *VmfsInfo) int32 {
	switch info.FsMajor {
	case 14:
		return 5
	case 24:
		return 6
	}
	if info.LvmMajor == 5 || info.LvmMajor == 6 {
		return int32(info.LvmMajor)
	}
	return 6
}

func (v *Volume) extents() []*Lun {
	if len(v.Extents) == 0 {
		return []*Lun{v.Lun}
	}
	return v.Extents
}

func (v *Volume) capacity() int64 {
	var c int64
	for _, l := range v.extents() {
		if l.Vmfs != nil {
			c += volumeCapacity(l, l.Vmfs)
		}
	}
	return c
}

func (w *Host) hostVmfsVolume(v *Volume) *types.HostVmfsVolume {
	major := vmfsMajor(&v.Info)
	version := "6.82"
	if major == 5 {
		version = "5.81"
	}
	var ext []types.HostScsiDiskPartition
	for _, l := range v.extents() {
		ext = append(ext, types.HostScsiDiskPartition{DiskName: l.Canonical, Partition: 1})
	}
	hv := &types.HostVmfsVolume{
		HostFileSystemVolume: types.HostFileSystemVolume{Type: "VMFS", Name: v.Label, Capacity: v.capacity()},
		BlockSizeMb:          1, BlockSize: 1024, UnmapGranularity: 1024, UnmapPriority: "low",
		MaxBlocks: 63963136, MajorVersion: major, Version: version, Uuid: v.UUID,
		Extent:         ext,
		VmfsUpgradable: false, Ssd: types.NewBool(false), Local: types.NewBool(false), ScsiDiskType: "native512",
	}
	if v.ForceMounted {
		hv.ForceMountedInfo = &types.HostForceMountedInfo{Persist: false, Mounted: true}
	}
	return hv
}

func volumeCapacity(l *Lun, info *VmfsInfo) int64 {
	c := l.Capacity() - info.PartStart - 34*int64(l.Ident.BlockSize)
	return c &^ (1<<20 - 1)
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// refreshVmfsHeaders re-reads the VMFS headers of every known LUN.
func (w *Host) refreshVmfsHeaders() {
	w.mu.Lock()
	luns := make([]*Lun, 0, len(w.luns))
	for _, l := range w.luns {
		luns = append(luns, l)
	}
	w.mu.Unlock()
	for _, l := range luns {
		d, err := w.openLun(l)
		if err != nil {
			log.Printf("rescan VMFS on %s: %v", l.Canonical, err)
			continue
		}
		v, err := ReadVmfs(d)
		d.s.Close()
		w.mu.Lock()
		l.Vmfs = v
		l.VmfsErr = ""
		if err != nil {
			l.VmfsErr = err.Error()
		}
		w.mu.Unlock()
	}
}

// extentsOf lists the LUNs holding extents of the logical volume key, in physical extent order
// (the head first). Called with w.mu held.
func (w *Host) extentsOf(key string) []*Lun {
	var out []*Lun
	for _, l := range w.luns {
		if l.Vmfs != nil && l.Vmfs.HasVT && l.Vmfs.LvmKey() == key {
			out = append(out, l)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Vmfs.FirstPE != out[j].Vmfs.FirstPE {
			return out[i].Vmfs.FirstPE < out[j].Vmfs.FirstPE
		}
		return out[i].Canonical < out[j].Canonical
	})
	return out
}

// spanOf gives the extents of the volume whose head is l (just l for a single-LUN volume) and
// what is missing for it to be complete ("" when complete). Called with w.mu held.
func (w *Host) spanOf(l *Lun) ([]*Lun, string) {
	if l.Vmfs == nil || !l.Vmfs.HasVT || l.Vmfs.NumDevices <= 1 {
		return []*Lun{l}, ""
	}
	ext := w.extentsOf(l.Vmfs.LvmKey())
	next := uint64(0)
	for _, e := range ext {
		if e.Vmfs.FirstPE != next {
			break
		}
		next = e.Vmfs.LastPE + 1
	}
	if len(ext) >= int(l.Vmfs.NumDevices) && next > 0 && ext[0] == l {
		return ext, ""
	}
	have := map[string]bool{}
	for _, e := range ext {
		have[strings.TrimPrefix(e.Canonical, "naa.")] = true
	}
	var missing []string
	for i, n := range l.Vmfs.DeviceNames {
		naa := strings.TrimPrefix(strings.SplitN(n, ":", 2)[0], "naa.")
		if !have[naa] {
			missing = append(missing, fmt.Sprintf("extent %d on naa.%s", i, naa))
		}
	}
	if len(missing) == 0 {
		missing = append(missing, fmt.Sprintf("%d of its %d extents", int(l.Vmfs.NumDevices)-len(ext), l.Vmfs.NumDevices))
	}
	return ext, strings.Join(missing, ", ")
}

func matchesAll(ext []*Lun) bool {
	for _, e := range ext {
		if !e.Vmfs.MatchesLun(e.NAA, e.Ident.Product) {
			return false
		}
	}
	return true
}

var announcedIncomplete = map[string]bool{}

// vmfsRescan mounts matching volumes and drops volumes whose LUN is gone.
func (w *Host) vmfsRescan() {
	w.mu.Lock()
	var toMount [][]*Lun
	var incomplete []string
	names := make([]string, 0, len(w.luns))
	for n := range w.luns {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		l := w.luns[n]
		if l.Vmfs == nil || !l.Vmfs.HasFS {
			continue // no VMFS, or an extent that is not the head: it mounts with its head
		}
		ext, missing := w.spanOf(l)
		if missing != "" {
			if !announcedIncomplete[l.Vmfs.LvmKey()] {
				announcedIncomplete[l.Vmfs.LvmKey()] = true
				incomplete = append(incomplete, fmt.Sprintf("VMFS volume %s (%s) on %s is missing %s: not mounted",
					l.Vmfs.Label, l.Vmfs.UUIDString(), l.Canonical, missing))
			}
			continue
		}
		delete(announcedIncomplete, l.Vmfs.LvmKey())
		if !matchesAll(ext) {
			continue
		}
		u := l.Vmfs.UUIDString()
		if v, ok := w.volumes[u]; ok {
			if v.Lun.Canonical == l.Canonical {
				v.Lun = l
				v.Extents = ext
				if v.Inaccessible {
					v.Inaccessible = false
					w.setAccessible(v, true)
				}
			}
			continue
		}
		if w.unmountedByUser()[u] {
			continue
		}
		toMount = append(toMount, ext)
	}
	var gone []*Volume
	for _, v := range w.volumes {
		head, ok := w.luns[v.Lun.Canonical]
		if !ok || head.Vmfs == nil || head.Vmfs.UUIDString() != v.UUID {
			gone = append(gone, v)
			continue
		}
		for _, e := range v.extents()[1:] { // an extent gone takes the volume with it
			l, ok := w.luns[e.Canonical]
			if !ok || l.Vmfs == nil || l.Vmfs.LvmKey() != head.Vmfs.LvmKey() {
				gone = append(gone, v)
				break
			}
		}
	}
	w.mu.Unlock()
	for _, m := range incomplete {
		w.postEvent(m, true)
	}

	for _, v := range gone {
		if len(v.DS.Vm) > 0 {
			if !v.Inaccessible {
				v.Inaccessible = true
				w.setAccessible(v, false)
				w.postEvent(fmt.Sprintf("datastore %s (%s) is inaccessible: LUN %s is gone", v.Label, v.UUID, v.Lun.Canonical), true)
			}
			continue
		}
		w.postEvent(fmt.Sprintf("datastore %s (%s) removed: LUN %s is gone", v.Label, v.UUID, v.Lun.Canonical), true)
		w.dropVolume(v)
	}
	for _, ext := range toMount {
		if _, f := w.mountVolume(ext, false); f != nil {
			log.Printf("mount %s: %s", ext[0].Canonical, faultText(f))
		}
	}
	w.refreshMountInfo()
}

var userUnmounted = map[string]bool{}

func (w *Host) unmountedByUser() map[string]bool { return userUnmounted }

func (w *Host) setAccessible(v *Volume, ok bool) {
	simulator.Map.WithLock(v.DS, func() {
		v.DS.Summary.Accessible = ok
		for i := range v.DS.Host {
			v.DS.Host[i].MountInfo.Accessible = types.NewBool(ok)
			if !ok {
				v.DS.Host[i].MountInfo.InaccessibleReason = "AllPathsDown_Start"
			} else {
				v.DS.Host[i].MountInfo.InaccessibleReason = ""
			}
		}
	})
}

// mountVolume creates the datastore for a volume on its extents (the head first) and loads its files.
//
// Under vCenter the hosts of one esxsim process share one working copy per volume, as ESXi
// hosts share one VMFS: a host that mounts a volume another host already mounts joins that
// copy (which may be newer than the LUN) and never reloads it, so mounting on one host
// cannot make files vanish, even for a moment, from another host's view of the datastore.
func (w *Host) mountVolume(ext []*Lun, force bool) (*Volume, types.BaseMethodFault) {
	mountMu.Lock() // one mount at a time per process: the check for a shared copy and its load are one step
	defer mountMu.Unlock()
	l := ext[0]
	info := *l.Vmfs
	u := info.UUIDString()
	w.mu.Lock()
	if _, ok := w.volumes[u]; ok {
		w.mu.Unlock()
		return nil, withMsg(&types.AlreadyExists{Name: u}, "a VMFS volume with UUID "+u+" is already mounted")
	}
	w.mu.Unlock()
	v := &Volume{UUID: u, Label: info.Label, Lun: l, Extents: ext, Info: info, ForceMounted: force}

	if _, shared := simulator.Map.Get(types.ManagedObjectReference{Type: "Datastore", Value: u}).(*simulator.Datastore); shared {
		syncMu.Lock()
		v.lastHash = w.dirHash(v)
		syncMu.Unlock()
	} else if f := w.loadVolumeFiles(v); f != nil {
		return nil, f
	}

	w.createDatastoreEntity(v)
	w.mu.Lock()
	w.volumes[u] = v
	w.mu.Unlock()
	w.registerMount(v)
	mode := "mounted"
	if force {
		mode = "force-mounted"
	}
	w.postEvent(fmt.Sprintf("VMFS volume %s (%s) %s from %s", v.Label, u, mode, l.Canonical), false)
	w.refreshMountInfo()
	return v, nil
}

// mountMu serialises mounts in this process (the vCenter hosts share working copies).
var mountMu sync.Mutex

// loadVolumeFiles replaces the volume's working copy with the files of its LUN's directory.
// SyncAll waits meanwhile: a half-loaded copy is never written back to the LUN.
func (w *Host) loadVolumeFiles(v *Volume) types.BaseMethodFault {
	d, err := w.openLun(v.Lun)
	if err != nil {
		return withMsg(&types.HostConfigFault{}, fmt.Sprintf("cannot open LUN %s: %v", v.Lun.Canonical, err))
	}
	dir, err := ReadDirectory(d, &v.Info)
	d.s.Close()
	if err != nil {
		return withMsg(&types.HostConfigFault{}, fmt.Sprintf("cannot read datastore %s on %s: %v", v.Label, v.Lun.Canonical, err))
	}
	syncMu.Lock()
	defer syncMu.Unlock()
	_ = os.RemoveAll(v.Dir())
	if err := os.MkdirAll(v.Dir(), 0700); err != nil {
		return withMsg(&types.HostConfigFault{}, err.Error())
	}
	for _, dd := range dir.Dirs {
		if safeRel(dd) {
			_ = os.MkdirAll(filepath.Join(v.Dir(), dd), 0700)
		}
	}
	for p, c := range dir.Files {
		if !safeRel(p) {
			continue
		}
		b, err := base64.StdEncoding.DecodeString(c)
		if err != nil {
			continue
		}
		full := filepath.Join(v.Dir(), p)
		_ = os.MkdirAll(filepath.Dir(full), 0700)
		_ = ioutil.WriteFile(full, b, 0600)
	}
	v.generation = dir.Generation
	v.lastHash = w.dirHash(v)
	return nil
}

func safeRel(p string) bool {
	c := filepath.Clean(p)
	return c != "." && !filepath.IsAbs(c) && !strings.HasPrefix(c, "..")
}

func (w *Host) createDatastoreEntity(v *Volume) {
	if ds, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "Datastore", Value: v.UUID}).(*simulator.Datastore); ok {
		// Shared storage: another host of this vCenter mounts the same volume (same
		// UUID) already. One Datastore entity, one mount entry per host.
		simulator.Map.WithLock(ds, func() {
			ds.Host = append(ds.Host, w.datastoreMount(v))
			ds.Summary.MultipleHostAccess = types.NewBool(len(ds.Host) > 1)
		})
		w.dss.Datastore = append(w.dss.Datastore, ds.Self) // dss may be locked by our caller
		addRef(&w.host.Datastore, ds.Self)
		if cr := computeResource(w.host); cr != nil {
			addRef(&cr.Datastore, ds.Self)
		}
		v.DS = ds
		return
	}
	capacity := v.capacity()
	free := capacity - 0x1600000 - dirSize(v.Dir())
	now := time.Now()
	ds := &simulator.Datastore{}
	ds.Self = types.ManagedObjectReference{Type: "Datastore", Value: v.UUID}
	ds.Name = v.Label
	ds.Info = &types.VmfsDatastoreInfo{
		DatastoreInfo: types.DatastoreInfo{
			Name: v.Label, Url: v.URL(), FreeSpace: free, MaxFileSize: 62 << 40,
			MaxVirtualDiskCapacity: 62 << 40, MaxMemoryFileSize: 62 << 40, Timestamp: &now, ContainerId: v.UUID,
		},
		MaxPhysicalRDMFileSize: 64 << 40, MaxVirtualRDMFileSize: 62 << 40,
		Vmfs: w.hostVmfsVolume(v),
	}
	ds.Summary = types.DatastoreSummary{
		Datastore: &ds.Self, Name: v.Label, Url: v.URL(), Capacity: capacity, FreeSpace: free,
		Accessible: true, MultipleHostAccess: types.NewBool(false), Type: "VMFS",
		MaintenanceMode: string(types.DatastoreSummaryMaintenanceModeStateNormal),
	}
	ds.Capability = types.DatastoreCapability{
		DirectoryHierarchySupported: true, RawDiskMappingsSupported: true, PerFileThinProvisioningSupported: true,
		StorageIORMSupported: types.NewBool(true), NativeSnapshotSupported: types.NewBool(false),
		TopLevelDirectoryCreateSupported: types.NewBool(true), SeSparseSupported: types.NewBool(true),
	}
	ds.Host = []types.DatastoreHostMount{w.datastoreMount(v)}
	browser := &simulator.HostDatastoreBrowser{}
	browser.Datastore = []types.ManagedObjectReference{ds.Self}
	ds.Browser = simulator.Map.Put(browser).Reference()
	putChild(w.dc.DatastoreFolder, ds)
	simulator.Map.AddReference(w.dc, &w.dc.Datastore, ds.Self)
	w.dss.Datastore = append(w.dss.Datastore, ds.Self) // dss may be locked by our caller
	addRef(&w.host.Datastore, ds.Self)
	if cr := computeResource(w.host); cr != nil {
		addRef(&cr.Datastore, ds.Self)
	}
	v.DS = ds
}

func (w *Host) datastoreMount(v *Volume) types.DatastoreHostMount {
	return types.DatastoreHostMount{
		Key: w.host.Self,
		MountInfo: types.HostMountInfo{
			Path: "/vmfs/volumes/" + v.UUID, AccessMode: string(types.HostMountModeReadWrite),
			Mounted: types.NewBool(true), Accessible: types.NewBool(true),
		},
	}
}

// dropSharedMount takes this host's mount off a datastore that other hosts still
// mount (shared storage under vCenter): the entity and its files stay for them.
func (w *Host) dropSharedMount(v *Volume) bool {
	ds := v.DS
	others := 0
	for _, m := range ds.Host {
		if m.Key != w.host.Self {
			others++
		}
	}
	if others == 0 {
		return false
	}
	simulator.Map.WithLock(ds, func() {
		kept := ds.Host[:0]
		for _, m := range ds.Host {
			if m.Key != w.host.Self {
				kept = append(kept, m)
			}
		}
		ds.Host = kept
		ds.Summary.MultipleHostAccess = types.NewBool(len(kept) > 1)
	})
	simulator.RemoveReference(&w.dss.Datastore, ds.Self) // dss may be locked by our caller
	simulator.RemoveReference(&w.host.Datastore, ds.Self)
	w.mu.Lock()
	delete(w.volumes, v.UUID)
	w.unregisterMount(v)
	w.mu.Unlock()
	w.refreshMountInfo()
	return true
}

// dropVolume removes the datastore without writing to the LUN.
func (w *Host) dropVolume(v *Volume) {
	ref := v.DS.Self
	if w.dropSharedMount(v) {
		return
	}
	removeChild(w.dc.DatastoreFolder, ref)
	simulator.Map.RemoveReference(w.dc, &w.dc.Datastore, ref)
	simulator.RemoveReference(&w.dss.Datastore, ref) // dss may be locked by our caller
	simulator.RemoveReference(&w.host.Datastore, ref)
	if cr := computeResource(w.host); cr != nil {
		simulator.RemoveReference(&cr.Datastore, ref)
	}
	simulator.Map.Remove(v.DS.Browser)
	w.mu.Lock()
	delete(w.volumes, v.UUID)
	w.unregisterMount(v)
	w.mu.Unlock()
	_ = os.RemoveAll(v.Dir())
	w.refreshMountInfo()
}

func (w *Host) refreshMountInfo() {
	w.mu.Lock()
	var mi []types.HostFileSystemMountInfo
	uuids := make([]string, 0, len(w.volumes))
	for u := range w.volumes {
		uuids = append(uuids, u)
	}
	sort.Strings(uuids)
	for _, u := range uuids {
		v := w.volumes[u]
		mi = append(mi, types.HostFileSystemMountInfo{
			MountInfo: types.HostMountInfo{
				Path: "/vmfs/volumes/" + u, AccessMode: "readWrite",
				Mounted: types.NewBool(true), Accessible: types.NewBool(!v.Inaccessible),
			},
			Volume:          w.hostVmfsVolume(v),
			VStorageSupport: "vStorageUnsupported",
		})
	}
	w.mu.Unlock()
	w.storage.FileSystemVolumeInfo.MountInfo = mi
}

// unmountVolume syncs and removes a mounted volume.
func (w *Host) unmountVolume(u string, forceMountedOnly bool, _ bool) types.BaseMethodFault {
	w.mu.Lock()
	v, ok := w.volumes[u]
	w.mu.Unlock()
	if !ok {
		return withMsg(&types.NotFound{}, "no mounted VMFS volume with UUID "+u)
	}
	if forceMountedOnly && !v.ForceMounted {
		return withMsg(&types.HostConfigFault{}, "VMFS volume "+u+" is not force-mounted")
	}
	if len(v.DS.Vm) > 0 {
		return withMsg(&types.ResourceInUse{Type: "Datastore", Name: v.Label}, fmt.Sprintf("datastore %s has %d registered VMs", v.Label, len(v.DS.Vm)))
	}
	w.syncVolume(v)
	w.dropVolume(v)
	if !v.ForceMounted {
		userUnmounted[u] = true
	}
	w.postEvent(fmt.Sprintf("VMFS volume %s (%s) unmounted", v.Label, u), false)
	return nil
}

func (w *Host) remountVolume(u string) types.BaseMethodFault {
	w.mu.Lock()
	_, mounted := w.volumes[u]
	var ext []*Lun
	missing := ""
	for _, l := range w.luns {
		if l.Vmfs != nil && l.Vmfs.HasFS && l.Vmfs.UUIDString() == u {
			if e, m := w.spanOf(l); matchesAll(e) {
				ext, missing = e, m
			}
		}
	}
	w.mu.Unlock()
	if mounted {
		return withMsg(&types.InvalidState{}, "VMFS volume "+u+" is already mounted")
	}
	if ext == nil {
		return withMsg(&types.NotFound{}, "no VMFS volume with UUID "+u+" on any LUN")
	}
	if missing != "" {
		return withMsg(&types.NotFound{}, "VMFS volume "+u+" is missing "+missing)
	}
	delete(userUnmounted, u)
	_, f := w.mountVolume(ext, false)
	return f
}

// unresolvedVolumes lists VMFS volumes whose stored device id does not match their LUN. A
// spanned volume is listed when one of its extents does not match; without all its extents it
// is listed with incompleteExtents and is not resolvable.
func (w *Host) unresolvedVolumes() []types.HostUnresolvedVmfsVolume {
	w.mu.Lock()
	defer w.mu.Unlock()
	groups := map[string][]*Lun{}
	var order []string
	for _, l := range w.luns {
		if l.Vmfs == nil {
			continue
		}
		key := ""
		if l.Vmfs.HasVT && l.Vmfs.NumDevices > 1 {
			key = "lvm:" + l.Vmfs.LvmKey() // every extent, matching or not: the volume is judged whole
		} else {
			if !l.Vmfs.HasFS || l.Vmfs.MatchesLun(l.NAA, l.Ident.Product) {
				continue
			}
			u := l.Vmfs.UUIDString()
			if v, ok := w.volumes[u]; ok && v.Lun.Canonical == l.Canonical {
				continue // force-mounted from this LUN
			}
			key = "uuid:" + u
		}
		if _, ok := groups[key]; !ok {
			order = append(order, key)
		}
		groups[key] = append(groups[key], l)
	}
	sort.Strings(order)
	var out []types.HostUnresolvedVmfsVolume
	for _, key := range order {
		ls := groups[key]
		if strings.HasPrefix(key, "lvm:") {
			if vol, ok := w.unresolvedSpan(ls); ok {
				out = append(out, vol)
			}
			continue
		}
		u := strings.TrimPrefix(key, "uuid:")
		sort.Slice(ls, func(i, j int) bool { return ls[i].Canonical < ls[j].Canonical })
		_, mounted := w.volumes[u]
		// another LUN carrying the same UUID with a matching id counts as a copy too
		copies := len(ls) > 1 || mounted
		for _, o := range w.luns {
			if o.Vmfs != nil && o.Vmfs.HasFS && o.Vmfs.UUIDString() == u && o.Vmfs.MatchesLun(o.NAA, o.Ident.Product) {
				copies = true
			}
		}
		reason := "diskIdMismatch"
		if mounted {
			reason = "uuidConflict"
		}
		vol := types.HostUnresolvedVmfsVolume{
			VmfsLabel: ls[0].Vmfs.Label, VmfsUuid: u,
			ResolveStatus: types.HostUnresolvedVmfsVolumeResolveStatus{
				Resolvable: true, IncompleteExtents: types.NewBool(false), MultipleCopies: types.NewBool(copies),
			},
		}
		for _, l := range ls {
			blocks := int32(volumeCapacity(l, l.Vmfs) >> 20)
			vol.Extent = append(vol.Extent, types.HostUnresolvedVmfsExtent{
				Device:     types.HostScsiDiskPartition{DiskName: l.Canonical, Partition: 1},
				DevicePath: l.DevicePath() + ":1", VmfsUuid: u, IsHeadExtent: true, Ordinal: 0,
				StartBlock: 0, EndBlock: blocks - 1, Reason: reason,
			})
			vol.TotalBlocks = blocks
		}
		out = append(out, vol)
	}
	return out
}

// unresolvedSpan describes a spanned volume as unresolved, if it is: an extent is a copy.
// Called with w.mu held.
func (w *Host) unresolvedSpan(ls []*Lun) (types.HostUnresolvedVmfsVolume, bool) {
	sort.Slice(ls, func(i, j int) bool { return ls[i].Vmfs.FirstPE < ls[j].Vmfs.FirstPE })
	var head *Lun
	for _, l := range ls {
		if l.Vmfs.HasFS {
			head = l
			break
		}
	}
	if matchesAll(ls) {
		return types.HostUnresolvedVmfsVolume{}, false // it mounts, or waits for its missing extents
	}
	missing := "the head extent"
	u, label := formatVmfsUUID(ls[0].Vmfs.LvmUUID), ""
	if head != nil {
		if v, ok := w.volumes[head.Vmfs.UUIDString()]; ok && v.Lun.Canonical == head.Canonical {
			return types.HostUnresolvedVmfsVolume{}, false // force-mounted from these LUNs
		}
		_, missing = w.spanOf(head)
		u, label = head.Vmfs.UUIDString(), head.Vmfs.Label
	}
	vol := types.HostUnresolvedVmfsVolume{
		VmfsLabel: label, VmfsUuid: u,
		ResolveStatus: types.HostUnresolvedVmfsVolumeResolveStatus{
			Resolvable: missing == "", IncompleteExtents: types.NewBool(missing != ""), MultipleCopies: types.NewBool(false),
		},
	}
	var start int32
	for i, l := range ls {
		blocks := int32(volumeCapacity(l, l.Vmfs) >> 20)
		vol.Extent = append(vol.Extent, types.HostUnresolvedVmfsExtent{
			Device:     types.HostScsiDiskPartition{DiskName: l.Canonical, Partition: 1},
			DevicePath: l.DevicePath() + ":1", VmfsUuid: u, IsHeadExtent: l == head, Ordinal: int32(i),
			StartBlock: start, EndBlock: start + blocks - 1, Reason: "diskIdMismatch",
		})
		start += blocks
	}
	vol.TotalBlocks = start
	return vol, true
}

func (w *Host) lunsForPaths(paths []string) ([]*Lun, types.BaseMethodFault) {
	var out []*Lun
	for _, p := range paths {
		l := w.lunByPath(p)
		if l == nil {
			return nil, withMsg(&types.NotFound{}, "device "+p+" not found")
		}
		if l.Vmfs == nil {
			return nil, withMsg(&types.NotFound{}, "no VMFS volume on "+p)
		}
		out = append(out, l)
	}
	if len(out) == 0 {
		return nil, withMsg(&types.InvalidArgument{InvalidProperty: "extentDevicePath"}, "no extent device path given")
	}
	return out, nil
}

func (w *Host) resolveVolumes(specs []types.HostUnresolvedVmfsResolutionSpec) []types.HostUnresolvedVmfsResolutionResult {
	var out []types.HostUnresolvedVmfsResolutionResult
	for _, spec := range specs {
		res := types.HostUnresolvedVmfsResolutionResult{Spec: spec}
		luns, f := w.lunsForPaths(spec.ExtentDevicePath)
		if f == nil {
			switch spec.UuidResolution {
			case "forceMount":
				var v *Volume
				var ext []*Lun
				if ext, f = w.forceMountExtents(luns); f == nil {
					v, f = w.mountVolume(ext, true)
				}
				if f == nil {
					res.Vmfs = w.hostVmfsVolume(v)
				}
			case "resignature":
				var v *Volume
				v, f = w.resignature(luns[0])
				if f == nil {
					res.Vmfs = w.hostVmfsVolume(v)
				}
			default:
				f = withMsg(&types.InvalidArgument{InvalidProperty: "uuidResolution"}, "unknown uuidResolution "+spec.UuidResolution)
			}
		}
		if f != nil {
			res.Fault = &types.LocalizedMethodFault{Fault: f, LocalizedMessage: faultText(f)}
		}
		out = append(out, res)
	}
	return out
}

// forceMountExtents orders the extents given for a force mount, head first, and refuses an
// incomplete volume.
func (w *Host) forceMountExtents(luns []*Lun) ([]*Lun, types.BaseMethodFault) {
	if len(luns) == 1 && (!luns[0].Vmfs.HasVT || luns[0].Vmfs.NumDevices <= 1) {
		return luns, nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range luns {
		if l.Vmfs.HasFS {
			ext, missing := w.spanOf(l)
			if missing != "" {
				return nil, withMsg(&types.InvalidArgument{InvalidProperty: "extentDevicePath"},
					"VMFS volume "+l.Vmfs.UUIDString()+" is missing "+missing+": it cannot be mounted")
			}
			return ext, nil
		}
	}
	return nil, withMsg(&types.InvalidArgument{InvalidProperty: "extentDevicePath"}, "none of the extents given holds the VMFS volume's head")
}

func (w *Host) diskIDFor(l *Lun) DiskID {
	return DiskID{
		Type: 3, Lun: l.LunID, DevType: 0, ScsiLevel: l.Ident.ScsiLevel,
		Vendor: l.Ident.Vendor, Model: l.Ident.Product, Rev: l.Ident.Revision, ID: l.DeviceID(),
	}
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

func (w *Host) hostMAC() string {
	return w.netsys.NetworkInfo.Pnic[0].Mac
}

// resignature writes a new UUID, each extent's own device id and a snap- label, then mounts.
// A spanned volume is resignatured whole: every extent must be there.
func (w *Host) resignature(l *Lun) (*Volume, types.BaseMethodFault) {
	w.mu.Lock()
	ext, missing := []*Lun{l}, ""
	if l.Vmfs.HasVT && l.Vmfs.NumDevices > 1 {
		ext, missing = nil, "the head extent"
		for _, e := range w.extentsOf(l.Vmfs.LvmKey()) {
			if e.Vmfs.HasFS {
				ext, missing = w.spanOf(e)
				break
			}
		}
	}
	w.mu.Unlock()
	if missing != "" {
		return nil, withMsg(&types.InvalidArgument{InvalidProperty: "extentDevicePath"},
			"VMFS volume on "+l.Canonical+" is missing "+missing+": resignature needs every extent")
	}
	head := ext[0]
	old := head.Vmfs.UUIDString()
	newUUID := newVmfsUUID(w.hostMAC())
	var lvmUUID [16]byte
	_, _ = rand.Read(lvmUUID[:])
	label := "snap-" + randHex(8) + "-" + head.Vmfs.Label
	if len(label) > 127 {
		label = label[:127]
	}
	var names []string
	for _, e := range ext {
		names = append(names, e.Canonical+":1")
	}
	for i, e := range ext {
		info := *e.Vmfs
		info.Disk = w.diskIDFor(e)
		info.HasVT, info.LvmUUID = true, lvmUUID
		if i == 0 {
			info.UUID, info.Label = newUUID, label
			if len(ext) > 1 {
				info.DeviceNames = names
			}
		}
		d, err := w.openLun(e)
		if err != nil {
			return nil, withMsg(&types.HostConfigFault{}, fmt.Sprintf("cannot open LUN %s: %v", e.Canonical, err))
		}
		err = WriteHeaders(d, &info)
		d.s.Close()
		if err != nil {
			return nil, withMsg(&types.HostConfigFault{}, fmt.Sprintf("writing VMFS header to %s: %v", e.Canonical, err))
		}
		w.mu.Lock()
		e.Vmfs = &info
		w.mu.Unlock()
	}
	w.postEvent(fmt.Sprintf("VMFS volume %s on %s resignatured: %s -> %s", label, head.Canonical, old, formatVmfsUUID(newUUID)), false)
	v, f := w.mountVolume(ext, false)
	if f != nil {
		return nil, f
	}
	w.mu.Lock()
	w.markResignatured(v)
	w.mu.Unlock()
	return v, nil
}

func (w *Host) markResignatured(v *Volume) {
	// VMs registered from a resignatured volume get the uuid.altered question
	resignatured[v.UUID] = true
}

var resignatured = map[string]bool{}

// createVmfs writes a fresh GPT, LVM header and FS3 descriptor to l and mounts it.
func (w *Host) createVmfs(l *Lun, name string, major int32) (*Volume, types.BaseMethodFault) {
	if l.Capacity() < minLunBytes {
		return nil, withMsg(&types.InvalidArgument{InvalidProperty: "spec.vmfs.extent"}, fmt.Sprintf("LUN %s is too small for VMFS (%d bytes, need %d)", l.Canonical, l.Capacity(), minLunBytes))
	}
	w.mu.Lock()
	for _, v := range w.volumes {
		if v.Label == name {
			w.mu.Unlock()
			return nil, withMsg(&types.DuplicateName{Name: name, Object: v.DS.Self}, "a datastore named "+name+" already exists")
		}
	}
	if l.Vmfs != nil {
		if v, ok := w.volumes[l.Vmfs.UUIDString()]; ok && v.Lun.Canonical == l.Canonical {
			w.mu.Unlock()
			return nil, withMsg(&types.ResourceInUse{Type: "ScsiLun", Name: l.Canonical}, "LUN "+l.Canonical+" holds mounted datastore "+v.Label)
		}
	}
	w.mu.Unlock()
	d, err := w.openLun(l)
	if err != nil {
		return nil, withMsg(&types.HostConfigFault{}, fmt.Sprintf("cannot open LUN %s: %v", l.Canonical, err))
	}
	defer d.s.Close()
	first, _, err := WriteGPT(d)
	if err != nil {
		return nil, withMsg(&types.HostConfigFault{}, fmt.Sprintf("writing GPT to %s: %v", l.Canonical, err))
	}
	info := &VmfsInfo{
		PartStart: first * int64(d.bs), HasGPT: true, LvmMajor: uint32(major), Disk: w.diskIDFor(l),
		DataOffset: defaultDataOffset, FsMajor: 24, UUID: newVmfsUUID(w.hostMAC()), Label: name,
		HasFS: true, DeviceNames: []string{l.Canonical + ":1"},
	}
	if major == 5 {
		info.FsMajor = 14
	}
	if err := WriteHeaders(d, info); err != nil {
		return nil, withMsg(&types.HostConfigFault{}, fmt.Sprintf("writing VMFS header to %s: %v", l.Canonical, err))
	}
	if err := WriteFilesystem(d, info); err != nil {
		return nil, withMsg(&types.HostConfigFault{}, fmt.Sprintf("writing VMFS metadata to %s: %v", l.Canonical, err))
	}
	if err := ClearDirectory(d, info); err != nil {
		return nil, withMsg(&types.HostConfigFault{}, err.Error())
	}
	w.mu.Lock()
	l.Vmfs = info
	w.mu.Unlock()
	d.s.Close()
	return w.mountVolume([]*Lun{l}, false)
}

// buildDirectory collects a volume's working files.
func (w *Host) buildDirectory(v *Volume) *Directory {
	dir := &Directory{Format: "esxsim-dir-1", Writer: w.cfg.Hostname, Files: map[string]string{}}
	root := v.Dir()
	_ = filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if fi.IsDir() {
			dir.Dirs = append(dir.Dirs, filepath.ToSlash(rel))
			return nil
		}
		base := filepath.Base(p)
		if strings.HasSuffix(base, ".log") || strings.HasPrefix(base, ".lck") {
			return nil // logs and locks stay on the host
		}
		if fi.Size() > maxSyncedFile {
			log.Printf("datastore %s: %s is %d bytes, not stored on the LUN (limit %d)", v.Label, rel, fi.Size(), maxSyncedFile)
			return nil
		}
		b, err := ioutil.ReadFile(p)
		if err == nil {
			dir.Files[filepath.ToSlash(rel)] = b64(b)
		}
		return nil
	})
	sort.Strings(dir.Dirs)
	return dir
}

func (w *Host) dirHash(v *Volume) string {
	d := w.buildDirectory(v)
	d.Writer = ""
	b, _ := json.Marshal(struct {
		Dirs  []string
		Files map[string]string
	}{d.Dirs, d.Files})
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// syncVolume writes the volume's files to the LUN if they changed.
func (w *Host) syncVolume(v *Volume) {
	if v.Inaccessible {
		return
	}
	h := w.dirHash(v)
	if h == v.lastHash {
		return
	}
	dir := w.buildDirectory(v)
	v.generation++
	dir.Generation = v.generation
	blob, err := EncodeDirectory(dir)
	if err != nil {
		log.Printf("sync %s: %v", v.Label, err)
		return
	}
	if v.Info.VolumeStart()+dirOffset+int64(len(blob)) > v.Lun.Capacity() {
		w.postEvent(fmt.Sprintf("datastore %s: file directory (%d bytes) does not fit on LUN %s", v.Label, len(blob), v.Lun.Canonical), true)
		return
	}
	d, err := w.openLun(v.Lun)
	if err != nil {
		w.postEvent(fmt.Sprintf("datastore %s: cannot write to LUN %s: %v", v.Label, v.Lun.Canonical, err), true)
		return
	}
	err = d.WriteAt(v.Info.VolumeStart()+dirOffset, blob)
	d.s.Close()
	if err != nil {
		w.postEvent(fmt.Sprintf("datastore %s: write to LUN %s failed: %v", v.Label, v.Lun.Canonical, err), true)
		return
	}
	v.lastHash = h
	log.Printf("datastore %s: wrote %d bytes (generation %d) to %s", v.Label, len(blob), v.generation, v.Lun.Canonical)
}

// SyncAll writes every changed datastore to its LUN.
func (w *Host) SyncAll() {
	syncMu.Lock()
	defer syncMu.Unlock()
	w.mu.Lock()
	vols := make([]*Volume, 0, len(w.volumes))
	for _, v := range w.volumes {
		vols = append(vols, v)
	}
	w.mu.Unlock()
	for _, v := range vols {
		w.syncVolume(v)
	}
	w.refreshFreeSpace(vols)
}

func (w *Host) refreshFreeSpace(vols []*Volume) {
	for _, v := range vols {
		free := v.capacity() - 0x1600000 - dirSize(v.Dir())
		if v.DS.Summary.FreeSpace != free {
			simulator.Map.WithLock(v.DS, func() {
				v.DS.Summary.FreeSpace = free
				v.DS.Info.GetDatastoreInfo().FreeSpace = free
			})
		}
	}
}

// Mount registry: one file per (VMFS uuid, host) in a directory shared by esxsim
// processes on this machine, to report one VMFS mounted read-write from two LUN identities.
type mountRecord struct {
	Host     string `json:"host"`
	PID      int    `json:"pid"`
	UUID     string `json:"uuid"`
	Label    string `json:"label"`
	Device   string `json:"device"`
	DeviceID string `json:"deviceId"`
	Forced   bool   `json:"forceMounted"`
}

func (w *Host) mountRecordPath(u string) string {
	return filepath.Join(w.cfg.MountRegistry, u+"@"+w.cfg.Hostname+".json")
}

func (w *Host) registerMount(v *Volume) {
	if err := os.MkdirAll(w.cfg.MountRegistry, 0777); err != nil {
		return
	}
	rec := mountRecord{Host: w.cfg.Hostname, PID: os.Getpid(), UUID: v.UUID, Label: v.Label,
		Device: v.Lun.Canonical, DeviceID: PrintableDeviceID(v.Lun.DeviceID()), Forced: v.ForceMounted}
	b, _ := json.Marshal(rec)
	_ = ioutil.WriteFile(w.mountRecordPath(v.UUID), b, 0644)
	files, _ := filepath.Glob(filepath.Join(w.cfg.MountRegistry, v.UUID+"@*.json"))
	for _, f := range files {
		if f == w.mountRecordPath(v.UUID) {
			continue
		}
		var o mountRecord
		b, err := ioutil.ReadFile(f)
		if err != nil || json.Unmarshal(b, &o) != nil {
			continue
		}
		if o.PID <= 0 || syscall.Kill(o.PID, 0) == syscall.ESRCH {
			_ = os.Remove(f)
			continue
		}
		if o.Device != rec.Device {
			w.postEvent(fmt.Sprintf("DOUBLE MOUNT: VMFS volume %s (%s) is mounted read-write by %s from %s and by %s from %s: one VMFS on two LUN identities",
				v.Label, v.UUID, o.Host, o.Device, rec.Host, rec.Device), true)
		}
	}
}

// unregisterMount is called with w.mu held or at exit.
func (w *Host) unregisterMount(v *Volume) {
	_ = os.Remove(w.mountRecordPath(v.UUID))
}
