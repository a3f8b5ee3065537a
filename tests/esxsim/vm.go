package main

// VM behaviour that the govmomi simulator lacks: real .vmx files on the datastore,
// RegisterVM from a .vmx, the "moved or copied" question (msg.uuid.altered) in the shape a
// real host gives it, guest heartbeat after power-on, quiesced snapshots, port group checks
// on network backings.

import (
	"bufio"
	"fmt"
	"io/ioutil"
	"log"
	"os"
	"path"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

type vmExtra struct {
	uuidAltered bool
	question    *types.VirtualMachineQuestionInfo
	answerCh    chan string // the label of the choice AnswerVM picked
	missingNets []string
	hbTimer     *time.Timer
}

func (w *Host) setupVMs() {
	w.intercept["Folder.CreateVM_Task"] = w.createVM
	w.intercept["Folder.RegisterVM_Task"] = w.registerVM
	w.intercept["VirtualMachine.ReconfigVM_Task"] = w.reconfigVM
	w.intercept["VirtualMachine.PowerOnVM_Task"] = w.powerOnVM
	w.intercept["VirtualMachine.PowerOffVM_Task"] = w.powerOffVM
	w.intercept["VirtualMachine.AnswerVM"] = w.answerVM
	w.intercept["VirtualMachine.CreateSnapshot_Task"] = w.createSnapshot
	w.intercept["VirtualMachine.UnregisterVM"] = w.unregisterVM
	w.intercept["VirtualMachine.Destroy_Task"] = w.destroyVM
}

// callOriginal dispatches a method to the simulator object, as the simulator would.
func callOriginal(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	handler := simulator.Map.Get(m.This)
	if handler == nil {
		return &faultBody{Reason: fault("managed object not found: "+m.This.Value, &types.ManagedObjectNotFound{Obj: m.This})}
	}
	name := strings.Title(m.Name)
	if strings.HasSuffix(name, "_Task") {
		name = strings.TrimSuffix(name, "_Task") + "Task"
	}
	fn := reflect.ValueOf(handler).MethodByName(name)
	if !fn.IsValid() {
		return &faultBody{Reason: fault(m.This.Value+" does not implement "+m.Name, &types.MethodNotFound{Receiver: m.This, Method: m.Name})}
	}
	var args []reflect.Value
	if fn.Type().NumIn() == 2 {
		args = append(args, reflect.ValueOf(ctx))
	}
	args = append(args, reflect.ValueOf(m.Body))
	var res []reflect.Value
	simulator.Map.WithLock(handler, func() { res = fn.Call(args) })
	return res[0].Interface().(soap.HasFault)
}

func taskResult(res soap.HasFault) (*simulator.Task, bool) {
	if res.Fault() != nil {
		return nil, false
	}
	v := reflect.ValueOf(res).Elem().FieldByName("Res")
	if !v.IsValid() || v.IsNil() {
		return nil, false
	}
	rv := v.Elem().FieldByName("Returnval")
	ref, ok := rv.Interface().(types.ManagedObjectReference)
	if !ok {
		return nil, false
	}
	t, ok := simulator.Map.Get(ref).(*simulator.Task)
	return t, ok
}

func (w *Host) extra(vm *simulator.VirtualMachine) *vmExtra {
	w.mu.Lock()
	defer w.mu.Unlock()
	x, ok := w.vmState[vm.Self.Value]
	if !ok {
		x = &vmExtra{}
		w.vmState[vm.Self.Value] = x
	}
	return x
}

// checkNetworks verifies that every standard network backing names a port group.
func (w *Host) checkNetworks(changes []types.BaseVirtualDeviceConfigSpec) types.BaseMethodFault {
	for i, c := range changes {
		spec := c.GetVirtualDeviceConfigSpec()
		if spec.Operation == types.VirtualDeviceConfigSpecOperationRemove {
			continue
		}
		nic, ok := spec.Device.(types.BaseVirtualEthernetCard)
		if !ok {
			continue
		}
		if b, ok := nic.GetVirtualEthernetCard().Backing.(*types.VirtualEthernetCardNetworkBackingInfo); ok {
			if w.netsys.findPortGroup(b.DeviceName) == nil || w.netsys.findNetworkEntity(b.DeviceName) == nil {
				f := &types.InvalidDeviceBacking{InvalidDeviceSpec: types.InvalidDeviceSpec{DeviceIndex: int32(i)}}
				return withMsg(f, fmt.Sprintf("network %q of device %d is not a port group on %s", b.DeviceName, i, w.cfg.Hostname))
			}
		}
	}
	return nil
}

func taskFault(this types.ManagedObjectReference, name string, f types.BaseMethodFault) types.ManagedObjectReference {
	t := simulator.CreateTask(simulator.Map.Get(this), name, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, f
	})
	return runTask(t)
}

func (w *Host) createVM(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	req := m.Body.(*types.CreateVM_Task)
	if f := w.checkNetworks(req.Config.DeviceChange); f != nil {
		return &methods.CreateVM_TaskBody{Res: &types.CreateVM_TaskResponse{Returnval: taskFault(m.This, "createVm", f)}}
	}
	if req.Config.Files != nil {
		var p object.DatastorePath
		if p.FromString(req.Config.Files.VmPathName) && simulator.Map.FindByName(p.Datastore, w.host.Datastore) == nil {
			f := withMsg(&types.NotFound{}, "datastore "+p.Datastore+" is not mounted on "+w.cfg.Hostname)
			return &methods.CreateVM_TaskBody{Res: &types.CreateVM_TaskResponse{Returnval: taskFault(m.This, "createVm", f)}}
		}
	}
	res := callOriginal(ctx, m)
	if t, ok := taskResult(res); ok && t.Info.State == types.TaskInfoStateSuccess {
		if ref, ok := t.Info.Result.(types.ManagedObjectReference); ok {
			if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
				w.initGuest(vm)
				w.writeDisks(vm)
				w.writeVmx(vm, true)
			}
		}
	}
	return res
}

func (w *Host) reconfigVM(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	req := m.Body.(*types.ReconfigVM_Task)
	if f := w.checkNetworks(req.Spec.DeviceChange); f != nil {
		return &methods.ReconfigVM_TaskBody{Res: &types.ReconfigVM_TaskResponse{Returnval: taskFault(m.This, "reconfigVm", f)}}
	}
	res := callOriginal(ctx, m)
	if t, ok := taskResult(res); ok && t.Info.State == types.TaskInfoStateSuccess {
		if vm, ok := simulator.Map.Get(m.This).(*simulator.VirtualMachine); ok {
			w.writeDisks(vm)
			w.writeVmx(vm, false)
		}
	}
	return res
}

// localPath maps "[ds] dir/file" to the working copy path.
func (w *Host) localPath(dsPath string) (string, string, bool) {
	var p object.DatastorePath
	if !p.FromString(dsPath) {
		return "", "", false
	}
	e := simulator.Map.FindByName(p.Datastore, w.host.Datastore)
	ds, ok := e.(*simulator.Datastore)
	if !ok {
		return "", "", false
	}
	u := ds.Info.GetDatastoreInfo().Url
	hostPath := "/vmfs/volumes/" + ds.Self.Value + "/" + p.Path
	return path.Join(u, p.Path), hostPath, true
}

// vmx files: ordered key = "value" lines.
type vmxFile struct {
	keys []string
	vals map[string]string
}

var vmxLine = regexp.MustCompile(`^\s*([^=#\s]+)\s*=\s*"?(.*?)"?\s*$`)

func parseVmx(b []byte) *vmxFile {
	f := &vmxFile{vals: map[string]string{}}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		m := vmxLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		f.set(m[1], m[2])
	}
	return f
}

func (f *vmxFile) set(k, v string) {
	lk := strings.ToLower(k)
	if _, ok := f.vals[lk]; !ok {
		f.keys = append(f.keys, k)
	}
	f.vals[lk] = v
}

func (f *vmxFile) get(k string) string { return f.vals[strings.ToLower(k)] }

func (f *vmxFile) del(prefix string) {
	lp := strings.ToLower(prefix)
	out := f.keys[:0]
	for _, k := range f.keys {
		if strings.HasPrefix(strings.ToLower(k), lp) {
			delete(f.vals, strings.ToLower(k))
			continue
		}
		out = append(out, k)
	}
	f.keys = out
}

func (f *vmxFile) bytes() []byte {
	var b strings.Builder
	for _, k := range f.keys {
		fmt.Fprintf(&b, "%s = \"%s\"\n", k, strings.ReplaceAll(f.vals[strings.ToLower(k)], `"`, `|22`))
	}
	return []byte(b.String())
}

// vmwareUUID formats a UUID as .vmx does: "56 4d ... 12-34 ...".
func vmwareUUID(s string) string {
	h := strings.ReplaceAll(s, "-", "")
	if len(h) != 32 {
		return s
	}
	var parts []string
	for i := 0; i < 32; i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
}

func fromVmwareUUID(s string) string {
	h := strings.ReplaceAll(strings.ReplaceAll(s, " ", ""), "-", "")
	if len(h) != 32 {
		return ""
	}
	return strings.ToLower(h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32])
}

// location is this host's uuid.location for a .vmx path.
func (w *Host) location(hostPath string) string {
	return vmwareUUID(newUUIDFrom([]byte(w.host.Summary.Hardware.Uuid + ":" + hostPath)))
}

var guestToVmx = map[string]string{
	"otherGuest": "other", "otherGuest64": "other-64", "otherLinux64Guest": "otherlinux-64", "otherLinuxGuest": "otherlinux",
	"ubuntu64Guest": "ubuntu-64", "centos7_64Guest": "centos7-64", "rhel7_64Guest": "rhel7-64", "rhel8_64Guest": "rhel8-64",
	"debian10_64Guest": "debian10-64", "windows9_64Guest": "windows9-64", "windows9Server64Guest": "windows9srv-64",
}

func vmxGuestToID(g string) string {
	for id, v := range guestToVmx {
		if v == g {
			return id
		}
	}
	if strings.HasSuffix(g, "Guest") {
		return g
	}
	return "otherGuest"
}

// writeVmx writes the VM's configuration to its .vmx, keeping keys it does not manage.
func (w *Host) writeVmx(vm *simulator.VirtualMachine, created bool) {
	local, hostPath, ok := w.localPath(vm.Config.Files.VmPathName)
	if !ok {
		return
	}
	old, _ := ioutil.ReadFile(local)
	f := parseVmx(old)
	if len(f.keys) == 0 {
		f.set(".encoding", "UTF-8")
		f.set("config.version", "8")
	}
	f.set("virtualHW.version", strings.TrimPrefix(vm.Config.Version, "vmx-"))
	f.set("displayName", vm.Name)
	g := vm.Config.GuestId
	if v, ok := guestToVmx[g]; ok {
		g = v
	}
	f.set("guestOS", g)
	f.set("memsize", strconv.Itoa(int(vm.Config.Hardware.MemoryMB)))
	f.set("numvcpus", strconv.Itoa(int(vm.Config.Hardware.NumCPU)))
	f.set("uuid.bios", vmwareUUID(vm.Config.Uuid))
	f.set("vc.uuid", vmwareUUID(vm.Config.InstanceUuid))
	if created || f.get("uuid.location") == "" {
		f.set("uuid.location", w.location(hostPath))
	}
	f.del("ethernet")
	f.del("scsi")
	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	n := 0
	for _, d := range devices {
		nic, ok := d.(types.BaseVirtualEthernetCard)
		if !ok {
			continue
		}
		card := nic.GetVirtualEthernetCard()
		p := fmt.Sprintf("ethernet%d.", n)
		f.set(p+"present", "TRUE")
		if b, ok := card.Backing.(*types.VirtualEthernetCardNetworkBackingInfo); ok {
			f.set(p+"networkName", b.DeviceName)
		}
		f.set(p+"virtualDev", nicVirtualDev(d))
		f.set(p+"addressType", "generated")
		f.set(p+"generatedAddress", card.MacAddress)
		n++
	}
	for _, d := range devices {
		c, ok := d.(types.BaseVirtualSCSIController)
		if !ok {
			continue
		}
		sc := c.GetVirtualSCSIController()
		p := fmt.Sprintf("scsi%d.", sc.BusNumber)
		f.set(p+"present", "TRUE")
		f.set(p+"virtualDev", strings.TrimSuffix(strings.ToLower(devices.Type(d)), "controller"))
		for _, dd := range devices.SelectByType((*types.VirtualDisk)(nil)) {
			disk := dd.(*types.VirtualDisk)
			if disk.ControllerKey != sc.Key || disk.UnitNumber == nil {
				continue
			}
			b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
			if !ok {
				continue
			}
			var dp object.DatastorePath
			dp.FromString(b.GetVirtualDeviceFileBackingInfo().FileName)
			name := dp.Path
			if path.Dir(dp.Path) == path.Dir(vmPathRel(vm)) {
				name = path.Base(dp.Path)
			}
			q := fmt.Sprintf("scsi%d:%d.", sc.BusNumber, *disk.UnitNumber)
			f.set(q+"present", "TRUE")
			f.set(q+"fileName", name)
		}
	}
	for _, o := range vm.Config.ExtraConfig {
		ov := o.GetOptionValue()
		if ov.Key == "govcsim" || strings.HasPrefix(ov.Key, "guestinfo.") && false {
			continue
		}
		if s, ok := ov.Value.(string); ok {
			f.set(ov.Key, s)
		}
	}
	if err := ioutil.WriteFile(local, f.bytes(), 0600); err != nil {
		log.Printf("write %s: %v", local, err)
	}
}

func vmPathRel(vm *simulator.VirtualMachine) string {
	var p object.DatastorePath
	p.FromString(vm.Config.Files.VmPathName)
	return p.Path
}

// writeDisks puts a small VMFS descriptor into every empty .vmdk of the VM.
func (w *Host) writeDisks(vm *simulator.VirtualMachine) {
	for _, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok {
			continue
		}
		name := b.GetVirtualDeviceFileBackingInfo().FileName
		local, _, ok := w.localPath(name)
		if !ok {
			continue
		}
		if fi, err := os.Stat(local); err != nil || fi.Size() > 0 {
			continue
		}
		sectors := disk.CapacityInKB * 2
		if disk.CapacityInBytes > 0 {
			sectors = disk.CapacityInBytes / 512
		}
		base := strings.TrimSuffix(path.Base(local), ".vmdk")
		desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\n# Extent description\nRW %d VMFS \"%s-flat.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\nddb.virtualHWVersion = \"%s\"\nddb.uuid = \"%s\"\n",
			sectors, base, strings.TrimPrefix(vm.Config.Version, "vmx-"), vmwareUUID(uuid.New().String()))
		_ = ioutil.WriteFile(local, []byte(desc), 0600)
	}
}

func (w *Host) registerVM(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	req := m.Body.(*types.RegisterVM_Task)
	local, hostPath, ok := w.localPath(req.Path)
	var vmx *vmxFile
	if ok {
		if b, err := ioutil.ReadFile(local); err == nil {
			vmx = parseVmx(b)
		}
	}
	if vmx == nil {
		f := withMsg(&types.NotFound{}, "file "+req.Path+" was not found")
		return &methods.RegisterVM_TaskBody{Res: &types.RegisterVM_TaskResponse{Returnval: taskFault(m.This, "registerVm", f)}}
	}
	if other := registeredAt(req.Path); other != "" {
		// ESXi and vCenter refuse a second registration of the same .vmx.
		f := withMsg(&types.AlreadyExists{Name: req.Path}, "The specified key, name, or identifier '"+req.Path+
			"' already exists (registered as VM "+other+").")
		return &methods.RegisterVM_TaskBody{Res: &types.RegisterVM_TaskResponse{Returnval: taskFault(m.This, "registerVm", f)}}
	}
	if req.Name == "" {
		req.Name = vmx.get("displayName")
	}
	// the simulator opens these on register; logs are not stored on the LUN
	for _, f := range []string{"vmware.log", req.Name + ".nvram"} {
		p := path.Join(path.Dir(local), f)
		if _, err := os.Stat(p); err != nil {
			_ = ioutil.WriteFile(p, nil, 0600)
		}
	}
	res := callOriginal(ctx, m)
	t, ok := taskResult(res)
	if !ok || t.Info.State != types.TaskInfoStateSuccess {
		return res
	}
	ref, _ := t.Info.Result.(types.ManagedObjectReference)
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return res
	}
	x := w.extra(vm)
	w.initGuest(vm)
	spec := types.VirtualMachineConfigSpec{}
	if g := vmx.get("guestOS"); g != "" {
		spec.GuestId = vmxGuestToID(g)
	}
	if n, err := strconv.Atoi(vmx.get("memsize")); err == nil {
		spec.MemoryMB = int64(n)
	}
	if n, err := strconv.Atoi(vmx.get("numvcpus")); err == nil {
		spec.NumCPUs = int32(n)
	}
	if u := fromVmwareUUID(vmx.get("uuid.bios")); u != "" {
		spec.Uuid = u
	}
	if u := fromVmwareUUID(vmx.get("vc.uuid")); u != "" {
		spec.InstanceUuid = u
	}
	var devices object.VirtualDeviceList
	for i := 0; i < 10; i++ {
		p := fmt.Sprintf("ethernet%d.", i)
		if !strings.EqualFold(vmx.get(p+"present"), "TRUE") {
			continue
		}
		netName := vmx.get(p + "networkName")
		if w.netsys.findPortGroup(netName) == nil || w.netsys.findNetworkEntity(netName) == nil {
			x.missingNets = append(x.missingNets, fmt.Sprintf("ethernet%d=%s", i, netName))
			continue
		}
		kind := vmx.get(p + "virtualDev")
		switch kind {
		case "", "ethernet":
			kind = "vmxnet3"
		case "vlance":
			kind = "pcnet32"
		}
		nic, err := devices.CreateEthernetCard(kind, &types.VirtualEthernetCardNetworkBackingInfo{
			VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: netName},
		})
		if err != nil {
			continue
		}
		if mac := vmx.get(p + "generatedAddress"); mac != "" {
			nic.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard().MacAddress = mac
			nic.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard().AddressType = "generated"
		}
		devices = append(devices, nic)
	}
	var p object.DatastorePath
	p.FromString(req.Path)
	dsRef := types.ManagedObjectReference{}
	if e := simulator.Map.FindByName(p.Datastore, w.host.Datastore); e != nil {
		dsRef = e.Reference()
	}
	var diskKeys []string
	for k := range vmx.vals {
		if regexp.MustCompile(`^scsi\d+:\d+\.filename$`).MatchString(k) {
			diskKeys = append(diskKeys, k)
		}
	}
	sort.Strings(diskKeys)
	if len(diskKeys) > 0 {
		scsi, err := devices.CreateSCSIController("pvscsi")
		if err == nil {
			devices = append(devices, scsi)
			for _, k := range diskKeys {
				file := vmx.vals[k]
				if !strings.HasPrefix(file, "[") && !strings.HasPrefix(file, "/") {
					file = fmt.Sprintf("[%s] %s", p.Datastore, path.Join(path.Dir(p.Path), file))
				}
				if lp, _, ok := w.localPath(file); !ok {
					continue
				} else if _, err := os.Stat(lp); err != nil {
					continue
				}
				disk := devices.CreateDisk(scsi.(types.BaseVirtualController), dsRef, file)
				devices = append(devices, disk)
			}
		}
	}
	spec.DeviceChange, _ = devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	for _, dc := range spec.DeviceChange {
		dc.GetVirtualDeviceConfigSpec().FileOperation = ""
	}
	for _, k := range vmx.keys {
		if strings.HasPrefix(strings.ToLower(k), "esxsim.") {
			spec.ExtraConfig = append(spec.ExtraConfig, &types.OptionValue{Key: k, Value: vmx.get(k)})
		}
	}
	rctx := internalCtx(vm.Self)
	var rres soap.HasFault
	simulator.Map.WithLock(vm, func() {
		rres = vm.ReconfigVMTask(rctx, &types.ReconfigVM_Task{This: vm.Self, Spec: spec})
	})
	if rt, ok := taskResult(rres); ok && rt.Info.Error != nil {
		log.Printf("register %s: applying .vmx: %s", req.Path, rt.Info.Error.LocalizedMessage)
	}
	loc := vmx.get("uuid.location")
	volUUID := ""
	if e := simulator.Map.FindByName(p.Datastore, w.host.Datastore); e != nil {
		volUUID = e.Reference().Value
	}
	w.mu.Lock()
	resig := resignatured[volUUID]
	w.mu.Unlock()
	if (loc != "" && loc != w.location(hostPath)) || resig {
		x.uuidAltered = true
		log.Printf("VM %s registered from %s: uuid.location differs (moved or copied)", vm.Name, req.Path)
	}
	return res
}

// normDsPath spells a datastore path one way: "[ds] dir/x.vmx" ("[ds]/dir/x.vmx" and "[ds]  dir" alike).
func normDsPath(p string) string {
	if !strings.HasPrefix(p, "[") {
		return p
	}
	i := strings.Index(p, "]")
	if i < 0 {
		return p
	}
	return p[:i+1] + " " + strings.TrimLeft(strings.TrimSpace(p[i+1:]), "/")
}

// registeredAt names the VM registered from the .vmx at dsPath, or "".
func registeredAt(dsPath string) string {
	want := normDsPath(dsPath)
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok || vm.Config == nil || vm.Config.Files.VmPathName == "" {
			continue
		}
		if normDsPath(vm.Config.Files.VmPathName) == want {
			return vm.Name
		}
	}
	return ""
}

// The choice labels of the "moved or copied" question on ESXi 5.x and later.
const (
	labelUUIDCancel = "button.uuid.cancel"
	labelUUIDMoved  = "button.uuid.movedTheVM"
	labelUUIDCopied = "button.uuid.copiedTheVM"
)

// uuidQuestion is the question a real host asks at the power-on of a VM whose uuid.location
// does not match (docs/esxsim.md cites the references):
//   - id: opaque, "_vmx<n>", numbered per VMX process: the first question of a power-on is
//     "_vmx1" (VMware's KB on answering from the shell, `vim-cmd vmsvc/message <vmid> _vmx1 2`);
//   - what it asks is only in message[].id: "msg.uuid.altered";
//   - choices as `vim-cmd vmsvc/message` lists them: "0. button.uuid.cancel (Cancel)",
//     "1. button.uuid.movedTheVM (I Moved It)", "2. button.uuid.copiedTheVM (I Copied It) [default]".
func uuidQuestion(n int) *types.VirtualMachineQuestionInfo {
	text := "This virtual machine might have been moved or copied. " +
		"In order to configure certain management and networking features, VMware ESX needs to know if this virtual machine was moved or copied. " +
		"If you don't know, answer \"I Copied It\"."
	return &types.VirtualMachineQuestionInfo{
		Id:   fmt.Sprintf("_vmx%d", n),
		Text: text,
		Choice: types.ChoiceOption{
			ChoiceInfo: []types.BaseElementDescription{
				&types.ElementDescription{Key: "0", Description: types.Description{Label: labelUUIDCancel, Summary: "Cancel"}},
				&types.ElementDescription{Key: "1", Description: types.Description{Label: labelUUIDMoved, Summary: "I Moved It"}},
				&types.ElementDescription{Key: "2", Description: types.Description{Label: labelUUIDCopied, Summary: "I Copied It"}},
			},
			DefaultIndex: 2,
		},
		Message: []types.VirtualMachineMessage{{Id: "msg.uuid.altered", Text: text}},
	}
}

// choiceLabel is the label of the choice keyed key, or "" when q offers no such choice.
func choiceLabel(q *types.VirtualMachineQuestionInfo, key string) string {
	for _, c := range q.Choice.ChoiceInfo {
		if d := c.GetElementDescription(); d.Key == key {
			return d.Label
		}
	}
	return ""
}

func (w *Host) setQuestion(vm *simulator.VirtualMachine, q *types.VirtualMachineQuestionInfo) {
	simulator.Map.WithLock(vm, func() {
		if q != nil {
			simulator.Map.Update(vm, []types.PropertyChange{
				{Name: "runtime.question", Val: q},
				{Name: "summary.runtime.question", Val: q},
			})
			return
		}
		// Registry.Update cannot assign nil: replace the whole runtime value instead
		rt := vm.Runtime
		rt.Question = nil
		vm.Summary.Runtime.Question = nil
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "runtime", Val: rt}})
	})
}

func (w *Host) powerOnVM(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	vm, ok := simulator.Map.Get(m.This).(*simulator.VirtualMachine)
	if !ok {
		return callOriginal(ctx, m)
	}
	x := w.extra(vm)
	if len(x.missingNets) > 0 {
		f := withMsg(&types.InvalidDeviceBacking{}, fmt.Sprintf("cannot power on %s: network backing %s names no port group on %s",
			vm.Name, strings.Join(x.missingNets, ", "), w.cfg.Hostname))
		return &methods.PowerOnVM_TaskBody{Res: &types.PowerOnVM_TaskResponse{Returnval: taskFault(m.This, "powerOn", f)}}
	}
	if f := w.checkNetworks(deviceSpecs(vm)); f != nil {
		return &methods.PowerOnVM_TaskBody{Res: &types.PowerOnVM_TaskResponse{Returnval: taskFault(m.This, "powerOn", f)}}
	}
	if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
		return callOriginal(ctx, m) // InvalidPowerState from the simulator
	}
	if x.uuidAltered {
		// ESXi reads uuid.action from the .vmx: the question is answered in advance, none is asked.
		switch strings.ToLower(w.vmxValue(vm, "uuid.action")) {
		case "keep":
			w.uuidAnswered(vm, false)
		case "create":
			w.uuidAnswered(vm, true)
		}
	}
	if !x.uuidAltered {
		res := callOriginal(ctx, m)
		if t, ok := taskResult(res); ok && t.Info.State == types.TaskInfoStateSuccess {
			w.scheduleHeartbeat(vm)
		}
		return res
	}
	w.mu.Lock()
	if x.answerCh == nil {
		x.answerCh = make(chan string, 1)
	}
	ch := x.answerCh
	x.question = uuidQuestion(1)
	w.mu.Unlock()
	req := m.Body.(*types.PowerOnVM_Task)
	task := simulator.CreateTask(vm, "powerOn", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		answer := <-ch
		w.setQuestion(vm, nil)
		w.mu.Lock()
		x.question = nil
		x.answerCh = nil
		w.mu.Unlock()
		if answer == labelUUIDCancel {
			return nil, withMsg(&types.RequestCanceled{}, "power on of "+vm.Name+" canceled at the msg.uuid.altered question")
		}
		w.uuidAnswered(vm, answer == labelUUIDCopied)
		var inner soap.HasFault
		ictx := internalCtx(vm.Self)
		simulator.Map.WithLock(vm, func() {
			inner = vm.PowerOnVMTask(ictx, &types.PowerOnVM_Task{This: vm.Self, Host: req.Host})
		})
		if t, ok := taskResult(inner); ok && t.Info.Error != nil {
			return nil, t.Info.Error.Fault
		}
		w.scheduleHeartbeat(vm)
		w.SyncAll()
		return nil, nil
	})
	ref := task.Self
	simulator.Map.Update(task, []types.PropertyChange{{Name: "info.state", Val: types.TaskInfoStateRunning}})
	go func() {
		defer func() {
			if r := recover(); r != nil {
				log.Printf("power on %s: %v", vm.Name, r)
			}
		}()
		runTask(task)
	}()
	w.setQuestion(vm, x.question)
	return &methods.PowerOnVM_TaskBody{Res: &types.PowerOnVM_TaskResponse{Returnval: ref}}
}

func deviceSpecs(vm *simulator.VirtualMachine) []types.BaseVirtualDeviceConfigSpec {
	var out []types.BaseVirtualDeviceConfigSpec
	for _, d := range vm.Config.Hardware.Device {
		out = append(out, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: d})
	}
	return out
}

// uuidAnswered applies "I moved it" (keep the BIOS UUID) or "I copied it" (new UUID).
func (w *Host) uuidAnswered(vm *simulator.VirtualMachine, copied bool) {
	simulator.Map.WithLock(vm, func() {
		if copied {
			nu := uuid.New().String()
			simulator.Map.Update(vm, []types.PropertyChange{
				{Name: "config.uuid", Val: nu},
				{Name: "summary.config.uuid", Val: nu},
			})
		}
	})
	_, hostPath, _ := w.localPath(vm.Config.Files.VmPathName)
	local, _, ok := w.localPath(vm.Config.Files.VmPathName)
	if ok {
		b, _ := ioutil.ReadFile(local)
		f := parseVmx(b)
		f.set("uuid.location", w.location(hostPath))
		f.set("uuid.bios", vmwareUUID(vm.Config.Uuid))
		_ = ioutil.WriteFile(local, f.bytes(), 0600)
	}
	w.mu.Lock()
	w.vmState[vm.Self.Value].uuidAltered = false
	w.mu.Unlock()
}

func (w *Host) answerVM(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	req := m.Body.(*types.AnswerVM)
	r := &methods.AnswerVMBody{}
	vm, ok := simulator.Map.Get(m.This).(*simulator.VirtualMachine)
	if !ok {
		r.Fault_ = fault("VM not found", &types.ManagedObjectNotFound{Obj: m.This})
		return r
	}
	x := w.extra(vm)
	w.mu.Lock()
	q, ch := x.question, x.answerCh
	w.mu.Unlock()
	if q == nil || ch == nil || req.QuestionId != q.Id {
		// AnswerVM's documented fault when the question id does not apply to the VM (e.g.
		// another client answered it already).
		r.Fault_ = fault("question "+req.QuestionId+" does not apply to "+vm.Name, &types.InvalidArgument{InvalidProperty: "questionId"})
		return r
	}
	label := choiceLabel(q, req.AnswerChoice)
	if label == "" {
		r.Fault_ = fault("answer "+req.AnswerChoice+" is not one of the choices of question "+q.Id, &types.InvalidArgument{InvalidProperty: "answerChoice"})
		return r
	}
	select {
	case ch <- label:
	default:
	}
	// wait briefly so the client sees the question cleared when AnswerVM returns
	for i := 0; i < 100; i++ {
		w.mu.Lock()
		done := x.question == nil
		w.mu.Unlock()
		if done {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.Res = &types.AnswerVMResponse{}
	return r
}

func (w *Host) scheduleHeartbeat(vm *simulator.VirtualMachine) {
	x := w.extra(vm)
	w.mu.Lock()
	if x.hbTimer != nil {
		x.hbTimer.Stop()
	}
	x.hbTimer = time.AfterFunc(w.cfg.HeartbeatDelay, func() {
		simulator.Map.WithLock(vm, func() {
			if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
				return
			}
			simulator.Map.Update(vm, []types.PropertyChange{
				{Name: "guestHeartbeatStatus", Val: types.ManagedEntityStatusGreen},
				{Name: "summary.quickStats.guestHeartbeatStatus", Val: types.ManagedEntityStatusGreen},
				{Name: "guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)},
				{Name: "guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsOk},
				{Name: "guest.toolsVersionStatus2", Val: "guestToolsCurrent"},
				{Name: "guest.guestState", Val: "running"},
				{Name: "summary.guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)},
				{Name: "summary.guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsOk},
			})
		})
	})
	w.mu.Unlock()
}

func (w *Host) stopHeartbeat(vm *simulator.VirtualMachine) {
	x := w.extra(vm)
	w.mu.Lock()
	if x.hbTimer != nil {
		x.hbTimer.Stop()
		x.hbTimer = nil
	}
	w.mu.Unlock()
	simulator.Map.WithLock(vm, func() {
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "guestHeartbeatStatus", Val: types.ManagedEntityStatusGray},
			{Name: "summary.quickStats.guestHeartbeatStatus", Val: types.ManagedEntityStatusGray},
			{Name: "guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)},
			{Name: "guest.guestState", Val: "notRunning"},
			{Name: "summary.guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)},
		})
	})
}

func (w *Host) powerOffVM(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	res := callOriginal(ctx, m)
	if vm, ok := simulator.Map.Get(m.This).(*simulator.VirtualMachine); ok {
		if t, ok := taskResult(res); ok && t.Info.State == types.TaskInfoStateSuccess {
			w.stopHeartbeat(vm)
		}
	}
	return res
}

func (w *Host) vmxValue(vm *simulator.VirtualMachine, key string) string {
	for _, o := range vm.Config.ExtraConfig {
		if ov := o.GetOptionValue(); strings.EqualFold(ov.Key, key) {
			if s, ok := ov.Value.(string); ok {
				return s
			}
		}
	}
	if local, _, ok := w.localPath(vm.Config.Files.VmPathName); ok {
		if b, err := ioutil.ReadFile(local); err == nil {
			return parseVmx(b).get(key)
		}
	}
	return ""
}

func (w *Host) createSnapshot(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	req := m.Body.(*types.CreateSnapshot_Task)
	vm, ok := simulator.Map.Get(m.This).(*simulator.VirtualMachine)
	if ok && req.Quiesce && vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
		if vm.Guest == nil || vm.Guest.ToolsRunningStatus != string(types.VirtualMachineToolsRunningStatusGuestToolsRunning) {
			f := withMsg(&types.ToolsUnavailable{}, "cannot quiesce "+vm.Name+": VMware Tools are not running in the guest")
			return &methods.CreateSnapshot_TaskBody{Res: &types.CreateSnapshot_TaskResponse{Returnval: taskFault(m.This, "createSnapshot", f)}}
		}
		if strings.EqualFold(w.vmxValue(vm, "esxsim.quiesceFail"), "TRUE") {
			f := withMsg(&types.ApplicationQuiesceFault{}, "An error occurred while quiescing the virtual machine "+vm.Name+" (esxsim.quiesceFail is set)")
			return &methods.CreateSnapshot_TaskBody{Res: &types.CreateSnapshot_TaskResponse{Returnval: taskFault(m.This, "createSnapshot", f)}}
		}
	}
	return callOriginal(ctx, m)
}

func (w *Host) unregisterVM(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	vm, _ := simulator.Map.Get(m.This).(*simulator.VirtualMachine)
	if vm != nil {
		w.stopHeartbeat(vm)
	}
	res := callOriginal(ctx, m)
	if res.Fault() == nil && vm != nil {
		w.mu.Lock()
		delete(w.vmState, vm.Self.Value)
		w.mu.Unlock()
	}
	return res
}

func (w *Host) destroyVM(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	vm, _ := simulator.Map.Get(m.This).(*simulator.VirtualMachine)
	res := callOriginal(ctx, m)
	if t, ok := taskResult(res); ok && t.Info.State == types.TaskInfoStateSuccess && vm != nil {
		w.stopHeartbeat(vm)
		w.mu.Lock()
		delete(w.vmState, vm.Self.Value)
		w.mu.Unlock()
	}
	return res
}

// vmNetworkNames lists the port group names a VM's NICs use.
func vmNetworkNames(vm *simulator.VirtualMachine) []string {
	var out []string
	if vm.Config == nil || vm.Config.Hardware.Device == nil {
		return nil
	}
	for _, d := range vm.Config.Hardware.Device {
		if nic, ok := d.(types.BaseVirtualEthernetCard); ok {
			if b, ok := nic.GetVirtualEthernetCard().Backing.(*types.VirtualEthernetCardNetworkBackingInfo); ok {
				out = append(out, b.DeviceName)
			}
		}
	}
	return out
}

// nicVirtualDev is the .vmx ethernetN.virtualDev for a NIC device.
func nicVirtualDev(d types.BaseVirtualDevice) string {
	t := reflect.TypeOf(d)
	if t.Kind() == reflect.Ptr {
		t = t.Elem()
	}
	switch name := strings.TrimPrefix(t.Name(), "Virtual"); name {
	case "PCNet32":
		return "vlance"
	default:
		return strings.ToLower(name)
	}
}

// initGuest sets what real ESXi reports for a powered-off VM with tools installed.
func (w *Host) initGuest(vm *simulator.VirtualMachine) {
	simulator.Map.WithLock(vm, func() {
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "guestHeartbeatStatus", Val: types.ManagedEntityStatusGray},
			{Name: "summary.quickStats.guestHeartbeatStatus", Val: types.ManagedEntityStatusGray},
			{Name: "guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)},
			{Name: "guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsNotRunning},
			{Name: "guest.guestState", Val: "notRunning"},
		})
	})
}
