package main

// Guest-side behaviour for `esxdr guest`: vCenter-style guest customization events and a
// guest-operations model of a Windows guest that is just deep enough to run the real
// commands over SOAP.
//
// Customization: a VM whose .vmx (or extraConfig) has `esxsim.customization` posts, at its
// first power-on, CustomizationStartedEvent and then, after the heartbeat delay,
//   "succeeded" → CustomizationSucceeded
//   "failed"    → CustomizationSysprepFailed (a CustomizationFailed)
//   "stuck"     → nothing more (and BootExecute gets sysprepDecrypter.exe, as a
//                 customization that died half-way leaves it)
// They are read through an EventHistoryCollector (QueryEvents is NotImplemented on the ESX
// model). POST /esxsim/customization?vm=NAME&event=started|succeeded|failed posts one by hand.
//
// Guest operations (GuestOperationsManager): StartProgramInGuest, ListProcessesInGuest,
// InitiateFileTransferFromGuest / ToGuest (served at /guestFile?id=<one-shot token>),
// DeleteFileInGuest, and VirtualMachine.RebootGuest. They need the VM powered on with tools
// running (GuestOperationsUnavailable / ToolsUnavailable otherwise) and the guest
// credentials of `esxsim.guestUser` / `esxsim.guestPassword` (default Administrator /
// esxsim; InvalidGuestLogin otherwise). The guest OS family comes from config.guestId
// (the .vmx guestOS): ids starting with "win" are Windows.
//
// A Windows guest runs cmd.exe (/c, with `> file` and `2>&1` redirection into guest files
// and .cmd/.bat scripts uploaded with ToGuest), reg.exe query/add/delete on an in-memory
// registry (HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\BootExecute starts as
// `esxsim.bootExecute`, entries separated by "|", default "autocheck autochk *"),
// shutdown.exe /r and sysprep.exe (counted). GET /esxsim/guest?vm=NAME shows the guest's
// state as JSON (boots, sysprep runs, sysprepDecrypter runs, registry, files).

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"log"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const sessionManagerKey = `HKEY_LOCAL_MACHINE\SYSTEM\CurrentControlSet\Control\Session Manager`

type regValue struct {
	Name string   `json:"name"`
	Kind string   `json:"type"`
	Data []string `json:"data"`
}

type guestState struct {
	Registry      map[string]map[string]*regValue `json:"registry"` // lower key → lower value name → value
	Files         map[string][]byte               `json:"-"`        // lower path → content
	FileNames     []string                        `json:"files"`
	procs         []types.GuestProcessInfo
	nextPid       int64
	Boots         int  `json:"boots"`
	SysprepRuns   int  `json:"sysprep_runs"`
	DecrypterRuns int  `json:"sysprep_decrypter_runs"`
	Customized    bool `json:"customization_posted"`
}

type guestTransfer struct {
	vm      types.ManagedObjectReference
	path    string
	upload  bool
	expires time.Time
}

var (
	guestMu   sync.Mutex
	guests    = map[string]*guestState{}
	transfers = map[string]*guestTransfer{}
)

func (w *Host) setupGuest() {
	w.intercept["GuestProcessManager.StartProgramInGuest"] = w.startProgramInGuest
	w.intercept["GuestProcessManager.ListProcessesInGuest"] = w.listProcessesInGuest
	w.intercept["GuestFileManager.InitiateFileTransferFromGuest"] = w.fileFromGuest
	w.intercept["GuestFileManager.InitiateFileTransferToGuest"] = w.fileToGuest
	w.intercept["GuestFileManager.DeleteFileInGuest"] = w.deleteFileInGuest
	w.intercept["VirtualMachine.RebootGuest"] = w.rebootGuest
	if orig, ok := w.intercept["VirtualMachine.PowerOnVM_Task"]; ok {
		w.intercept["VirtualMachine.PowerOnVM_Task"] = func(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
			res := orig(ctx, m)
			if res.Fault() == nil {
				go w.afterPowerOn(m.This)
			}
			return res
		}
	}
}

func isWindowsGuest(vm *simulator.VirtualMachine) bool {
	return vm.Config != nil && strings.HasPrefix(strings.ToLower(vm.Config.GuestId), "win")
}

func (w *Host) guest(vm *simulator.VirtualMachine) *guestState {
	guestMu.Lock()
	g, ok := guests[vm.Self.Value]
	guestMu.Unlock()
	if ok {
		return g
	}
	g = &guestState{Registry: map[string]map[string]*regValue{}, Files: map[string][]byte{}, nextPid: 4000}
	if isWindowsGuest(vm) {
		boot := []string{"autocheck autochk *"}
		if v := w.vmxValue(vm, "esxsim.bootExecute"); v != "" {
			boot = nil
			if v != "-" {
				boot = strings.Split(v, "|")
			}
		} else if strings.EqualFold(w.vmxValue(vm, "esxsim.customization"), "stuck") {
			boot = append(boot, "sysprepDecrypter.exe")
		}
		if boot != nil {
			g.setReg(sessionManagerKey, &regValue{Name: "BootExecute", Kind: "REG_MULTI_SZ", Data: boot})
		}
	}
	guestMu.Lock()
	defer guestMu.Unlock()
	if prev, ok := guests[vm.Self.Value]; ok {
		return prev
	}
	guests[vm.Self.Value] = g
	return g
}

func (g *guestState) setReg(key string, v *regValue) {
	k := strings.ToLower(key)
	if g.Registry[k] == nil {
		g.Registry[k] = map[string]*regValue{}
	}
	g.Registry[k][strings.ToLower(v.Name)] = v
}

// ---------------------------------------------------------------- customization events

func (w *Host) afterPowerOn(ref types.ManagedObjectReference) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
		if !ok {
			return
		}
		on := false
		simulator.Map.WithLock(vm, func() { on = vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn })
		if on {
			outcome := strings.ToLower(w.vmxValue(vm, "esxsim.customization"))
			if outcome == "" {
				return
			}
			g := w.guest(vm)
			guestMu.Lock()
			done := g.Customized
			g.Customized = true
			guestMu.Unlock()
			if done {
				return
			}
			w.postCustomization(vm, "started")
			if outcome == "succeeded" || outcome == "failed" {
				time.Sleep(w.cfg.HeartbeatDelay)
				w.postCustomization(vm, outcome)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (w *Host) postCustomization(vm *simulator.VirtualMachine, kind string) error {
	ev := types.Event{
		CreatedTime: time.Now(),
		UserName:    "",
		Datacenter:  &types.DatacenterEventArgument{Datacenter: w.dc.Self, EntityEventArgument: types.EntityEventArgument{Name: w.dc.Name}},
		Host:        &types.HostEventArgument{Host: w.host.Self, EntityEventArgument: types.EntityEventArgument{Name: w.host.Name}},
		Vm:          &types.VmEventArgument{Vm: vm.Self, EntityEventArgument: types.EntityEventArgument{Name: vm.Name}},
	}
	logLoc := `C:\Windows\TEMP\vmware-imc\guestcust.log`
	if !isWindowsGuest(vm) {
		logLoc = "/var/log/vmware-imc/toolsDeployPkg.log"
	}
	base := types.CustomizationEvent{VmEvent: types.VmEvent{Event: ev}, LogLocation: logLoc}
	var e types.BaseEvent
	switch kind {
	case "started":
		ev.FullFormattedMessage = "Started customization of VM " + vm.Name + ". Customization log located at " + logLoc + " in the guest OS."
		base.VmEvent.Event = ev
		e = &types.CustomizationStartedEvent{CustomizationEvent: base}
	case "succeeded":
		ev.FullFormattedMessage = "Customization of VM " + vm.Name + " succeeded. Customization log located at " + logLoc + " in the guest OS."
		base.VmEvent.Event = ev
		e = &types.CustomizationSucceeded{CustomizationEvent: base}
	case "failed":
		ev.FullFormattedMessage = "The version of Sysprep provided for customizing VM " + vm.Name + " does not match the version of guest OS."
		base.VmEvent.Event = ev
		e = &types.CustomizationSysprepFailed{CustomizationFailed: types.CustomizationFailed{CustomizationEvent: base,
			Reason: "sysprep files missing or outdated"}, SysprepVersion: "", SystemVersion: vm.Config.GuestFullName}
	default:
		return fmt.Errorf("unknown customization event %q (started, succeeded, failed)", kind)
	}
	log.Printf("customization of %s: %s", vm.Name, kind)
	em := simulator.Map.EventManager()
	ctx := internalCtx(em.Reference())
	simulator.Map.WithLock(em, func() { em.PostEvent(ctx, &types.PostEvent{EventToPost: e}) })
	return nil
}

func findVMByName(name string) *simulator.VirtualMachine {
	for _, o := range simulator.Map.All("VirtualMachine") {
		if vm, ok := o.(*simulator.VirtualMachine); ok && vm.Name == name {
			return vm
		}
	}
	return nil
}

func (w *Host) serveCustomization(rw http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(rw, "POST /esxsim/customization?vm=NAME&event=started|succeeded|failed", http.StatusMethodNotAllowed)
		return
	}
	vm := findVMByName(r.URL.Query().Get("vm"))
	if vm == nil {
		http.Error(rw, "no such VM", http.StatusNotFound)
		return
	}
	if err := w.postCustomization(vm, r.URL.Query().Get("event")); err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	rw.WriteHeader(http.StatusNoContent)
}

func (w *Host) serveGuestState(rw http.ResponseWriter, r *http.Request) {
	vm := findVMByName(r.URL.Query().Get("vm"))
	if vm == nil {
		http.Error(rw, "no such VM", http.StatusNotFound)
		return
	}
	g := w.guest(vm)
	guestMu.Lock()
	g.FileNames = g.FileNames[:0]
	for p := range g.Files {
		g.FileNames = append(g.FileNames, p)
	}
	b, _ := json.Marshal(g)
	guestMu.Unlock()
	rw.Header().Set("Content-Type", "application/json")
	_, _ = rw.Write(b)
}

// ---------------------------------------------------------------- guest operation checks

// guestCheck returns the VM when guest operations may run on it, or the fault to return.
func (w *Host) guestCheck(ref types.ManagedObjectReference, auth types.BaseGuestAuthentication) (*simulator.VirtualMachine, *soap.Fault) {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return nil, fault("VM not found", &types.ManagedObjectNotFound{Obj: ref})
	}
	running := false
	simulator.Map.WithLock(vm, func() {
		running = vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn && vm.Guest != nil &&
			vm.Guest.ToolsRunningStatus == string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
	})
	if !running {
		return nil, fault("", withMsg(&types.GuestOperationsUnavailable{},
			"guest operations on "+vm.Name+" are unavailable: the VM is not powered on or VMware Tools are not running"))
	}
	npa, ok := auth.(*types.NamePasswordAuthentication)
	user := w.vmxValue(vm, "esxsim.guestUser")
	if user == "" {
		user = "Administrator"
	}
	pass := w.vmxValue(vm, "esxsim.guestPassword")
	if pass == "" {
		pass = "esxsim"
	}
	if !ok || !strings.EqualFold(npa.Username, user) || npa.Password != pass {
		return nil, fault("", withMsg(&types.InvalidGuestLogin{}, "guest login to "+vm.Name+" failed: wrong user name or password"))
	}
	return vm, nil
}

func guestPathKey(vm *simulator.VirtualMachine, p string) string {
	if isWindowsGuest(vm) {
		return strings.ToLower(strings.ReplaceAll(p, "/", `\`))
	}
	return p
}

// ---------------------------------------------------------------- processes

func (w *Host) startProgramInGuest(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	req := m.Body.(*types.StartProgramInGuest)
	body := &methods.StartProgramInGuestBody{}
	vm, f := w.guestCheck(req.Vm, req.Auth)
	if f != nil {
		body.Fault_ = f
		return body
	}
	spec := req.Spec.GetGuestProgramSpec()
	g := w.guest(vm)
	out, code, ferr := w.runProgram(vm, g, spec.ProgramPath, spec.Arguments)
	if ferr != nil {
		body.Fault_ = fault("", ferr)
		return body
	}
	_ = out // a program's own stdout goes nowhere, as on real guests (redirect it to a file)
	guestMu.Lock()
	g.nextPid++
	pid := g.nextPid
	now := time.Now()
	end := now
	g.procs = append(g.procs, types.GuestProcessInfo{Name: path.Base(strings.ReplaceAll(spec.ProgramPath, `\`, "/")), Pid: pid,
		Owner: "Administrator", CmdLine: spec.ProgramPath + " " + spec.Arguments, StartTime: now, EndTime: &end, ExitCode: int32(code)})
	guestMu.Unlock()
	log.Printf("guest %s: %s %s -> exit %d", vm.Name, spec.ProgramPath, spec.Arguments, code)
	body.Res = &types.StartProgramInGuestResponse{Returnval: pid}
	return body
}

func (w *Host) listProcessesInGuest(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	req := m.Body.(*types.ListProcessesInGuest)
	body := &methods.ListProcessesInGuestBody{}
	vm, f := w.guestCheck(req.Vm, req.Auth)
	if f != nil {
		body.Fault_ = f
		return body
	}
	g := w.guest(vm)
	want := map[int64]bool{}
	for _, p := range req.Pids {
		want[p] = true
	}
	var out []types.GuestProcessInfo
	guestMu.Lock()
	for _, p := range g.procs {
		if len(want) == 0 || want[p.Pid] {
			out = append(out, p)
		}
	}
	guestMu.Unlock()
	body.Res = &types.ListProcessesInGuestResponse{Returnval: out}
	return body
}

// runProgram runs one program in the modelled guest: (output, exit code) or a fault when the
// program cannot be started at all.
func (w *Host) runProgram(vm *simulator.VirtualMachine, g *guestState, program, args string) (string, int, types.BaseMethodFault) {
	if !isWindowsGuest(vm) {
		if strings.Contains(program, `\`) || strings.HasPrefix(strings.ToLower(program), "c:") {
			return "", 0, &types.FileNotFound{FileFault: types.FileFault{File: program}}
		}
		return "", 0, nil // a Linux guest: /bin/sh and friends exit 0 and do nothing here
	}
	name := strings.ToLower(path.Base(strings.ReplaceAll(program, `\`, "/")))
	name = strings.TrimSuffix(name, ".exe")
	switch name {
	case "cmd":
		out, code := w.runCmd(vm, g, args)
		return out, code, nil
	case "reg", "shutdown", "sysprep":
		out, code := w.runCommand(vm, g, append([]string{name}, splitArgs(args)...))
		return out, code, nil
	}
	if _, ok := g.Files[guestPathKey(vm, program)]; ok {
		out, code := w.runCommand(vm, g, append([]string{program}, splitArgs(args)...))
		return out, code, nil
	}
	return "", 0, &types.FileNotFound{FileFault: types.FileFault{File: program}}
}

// runCmd models `cmd.exe /c COMMAND [> file | >> file] [2>&1]`.
func (w *Host) runCmd(vm *simulator.VirtualMachine, g *guestState, args string) (string, int) {
	rest := strings.TrimSpace(args)
	for {
		low := strings.ToLower(rest)
		if strings.HasPrefix(low, "/c ") || strings.HasPrefix(low, "/s ") || strings.HasPrefix(low, "/q ") {
			rest = strings.TrimSpace(rest[3:])
			continue
		}
		break
	}
	command, target, appendTo := splitRedirect(rest)
	out, code := w.runCommand(vm, g, splitArgs(command))
	if target != "" {
		k := guestPathKey(vm, target)
		guestMu.Lock()
		if appendTo {
			g.Files[k] = append(g.Files[k], []byte(out)...)
		} else {
			g.Files[k] = []byte(out)
		}
		guestMu.Unlock()
	}
	return out, code
}

// splitRedirect finds "> file" / ">> file" outside quotes and drops "2>&1".
func splitRedirect(s string) (command, target string, appendTo bool) {
	s = strings.Replace(s, "2>&1", "", -1)
	inQ := false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			inQ = !inQ
		case '>':
			if inQ {
				continue
			}
			command = strings.TrimSpace(s[:i])
			rest := s[i+1:]
			if strings.HasPrefix(rest, ">") {
				appendTo = true
				rest = rest[1:]
			}
			t := splitArgs(rest)
			if len(t) > 0 {
				target = t[0]
			}
			return command, target, appendTo
		}
	}
	return strings.TrimSpace(s), "", false
}

// splitArgs splits a Windows command line: whitespace outside double quotes, quotes removed,
// \" is a literal quote.
func splitArgs(s string) []string {
	var out []string
	var cur strings.Builder
	inQ, have := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && s[i+1] == '"':
			cur.WriteByte('"')
			have = true
			i++
		case c == '"':
			inQ = !inQ
			have = true
		case (c == ' ' || c == '\t') && !inQ:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

func (w *Host) runCommand(vm *simulator.VirtualMachine, g *guestState, argv []string) (string, int) {
	if len(argv) == 0 {
		return "", 0
	}
	name := strings.ToLower(path.Base(strings.ReplaceAll(argv[0], `\`, "/")))
	name = strings.TrimSuffix(name, ".exe")
	switch name {
	case "reg":
		return g.reg(argv[1:])
	case "shutdown":
		for _, a := range argv[1:] {
			if strings.EqualFold(a, "/r") {
				go w.guestReboot(vm)
				return "", 0
			}
		}
		return "", 0
	case "sysprep":
		guestMu.Lock()
		g.SysprepRuns++
		guestMu.Unlock()
		for _, a := range argv[1:] {
			if strings.EqualFold(a, "/reboot") {
				go w.guestReboot(vm)
			}
		}
		return "", 0
	case "echo":
		return strings.Join(argv[1:], " ") + "\r\n", 0
	}
	if strings.HasSuffix(name, ".cmd") || strings.HasSuffix(name, ".bat") {
		guestMu.Lock()
		script, ok := g.Files[guestPathKey(vm, argv[0])]
		guestMu.Unlock()
		if !ok {
			return "The system cannot find the path specified.\r\n", 1
		}
		var out strings.Builder
		code := 0
		for _, line := range strings.Split(strings.ReplaceAll(string(script), "\r\n", "\n"), "\n") {
			line = strings.TrimSpace(line)
			low := strings.ToLower(line)
			if line == "" || strings.HasPrefix(low, "@echo off") || strings.HasPrefix(low, "rem ") || low == "rem" {
				continue
			}
			line = strings.ReplaceAll(line, "%%", "%")
			o, c := w.runCommand(vm, g, splitArgs(strings.TrimPrefix(line, "@")))
			out.WriteString(o)
			code = c
		}
		return out.String(), code
	}
	return "'" + argv[0] + "' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n", 9009
}

func canonicalKey(k string) string {
	up := strings.ToUpper(k)
	for _, p := range []string{"HKLM\\", "HKEY_LOCAL_MACHINE\\"} {
		if strings.HasPrefix(up, p) {
			return "HKEY_LOCAL_MACHINE\\" + k[len(p):]
		}
	}
	return k
}

const regNotFound = "ERROR: The system was unable to find the specified registry key or value.\r\n"

// reg models reg.exe query/add/delete for values (REG_SZ and REG_MULTI_SZ, "\0" separated).
func (g *guestState) reg(args []string) (string, int) {
	if len(args) < 2 {
		return "ERROR: Invalid syntax.\r\nType \"REG /?\" for usage.\r\n", 1
	}
	op, key := strings.ToLower(args[0]), canonicalKey(args[1])
	var value, kind, data, sep string
	force := false
	sep = `\0`
	for i := 2; i < len(args); i++ {
		a := strings.ToLower(args[i])
		next := func() string {
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch a {
		case "/v":
			value = next()
		case "/t":
			kind = strings.ToUpper(next())
		case "/d":
			data = next()
		case "/s":
			sep = next()
		case "/f":
			force = true
		}
	}
	if value == "" {
		return "ERROR: Invalid syntax (esxsim models values only: /v NAME).\r\n", 1
	}
	guestMu.Lock()
	defer guestMu.Unlock()
	vals := g.Registry[strings.ToLower(key)]
	cur := vals[strings.ToLower(value)]
	switch op {
	case "query":
		if cur == nil {
			return regNotFound, 1
		}
		return fmt.Sprintf("\r\n%s\r\n    %s    %s    %s\r\n\r\n", key, cur.Name, cur.Kind, strings.Join(cur.Data, `\0`)), 0
	case "add":
		if cur != nil && !force {
			return "Value " + value + " exists, overwrite(Yes/No)? \r\nThe operation was canceled by the user.\r\n", 1
		}
		if kind == "" {
			kind = "REG_SZ"
		}
		v := &regValue{Name: value, Kind: kind}
		if kind == "REG_MULTI_SZ" {
			for _, part := range strings.Split(data, sep) {
				if part != "" {
					v.Data = append(v.Data, part)
				}
			}
		} else {
			v.Data = []string{data}
		}
		if cur != nil {
			v.Name = cur.Name
		}
		g.setReg(key, v)
		return "The operation completed successfully.\r\n", 0
	case "delete":
		if cur == nil {
			return regNotFound, 1
		}
		delete(vals, strings.ToLower(value))
		return "The operation completed successfully.\r\n", 0
	}
	return "ERROR: Invalid syntax.\r\n", 1
}

func (w *Host) guestReboot(vm *simulator.VirtualMachine) {
	g := w.guest(vm)
	w.stopHeartbeat(vm)
	guestMu.Lock()
	g.Boots++
	if v := g.Registry[strings.ToLower(sessionManagerKey)]["bootexecute"]; v != nil {
		for _, e := range v.Data {
			if strings.Contains(strings.ToLower(e), "sysprepdecrypter") {
				g.DecrypterRuns++
			}
		}
	}
	guestMu.Unlock()
	log.Printf("guest %s: reboot", vm.Name)
	w.scheduleHeartbeat(vm)
}

func (w *Host) rebootGuest(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	body := &methods.RebootGuestBody{}
	vm, ok := simulator.Map.Get(m.This).(*simulator.VirtualMachine)
	if !ok {
		body.Fault_ = fault("VM not found", &types.ManagedObjectNotFound{Obj: m.This})
		return body
	}
	if vm.Guest == nil || vm.Guest.ToolsRunningStatus != string(types.VirtualMachineToolsRunningStatusGuestToolsRunning) {
		body.Fault_ = fault("", withMsg(&types.ToolsUnavailable{}, "cannot reboot the guest of "+vm.Name+": VMware Tools are not running"))
		return body
	}
	go w.guestReboot(vm)
	body.Res = &types.RebootGuestResponse{}
	return body
}

// ---------------------------------------------------------------- files

func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (w *Host) transferURL(t *guestTransfer) string {
	tok := newToken()
	guestMu.Lock()
	for k, old := range transfers {
		if time.Now().After(old.expires) {
			delete(transfers, k)
		}
	}
	transfers[tok] = t
	guestMu.Unlock()
	scheme := "http"
	if w.svc.Listen != nil && w.svc.Listen.Scheme != "" {
		scheme = w.svc.Listen.Scheme
	}
	return scheme + "://*/guestFile?id=" + tok
}

func (w *Host) fileFromGuest(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	req := m.Body.(*types.InitiateFileTransferFromGuest)
	body := &methods.InitiateFileTransferFromGuestBody{}
	vm, f := w.guestCheck(req.Vm, req.Auth)
	if f != nil {
		body.Fault_ = f
		return body
	}
	g := w.guest(vm)
	guestMu.Lock()
	data, ok := g.Files[guestPathKey(vm, req.GuestFilePath)]
	guestMu.Unlock()
	if !ok {
		body.Fault_ = fault("", withMsg(&types.FileNotFound{FileFault: types.FileFault{File: req.GuestFilePath}},
			"file "+req.GuestFilePath+" was not found in the guest of "+vm.Name))
		return body
	}
	u := w.transferURL(&guestTransfer{vm: vm.Self, path: req.GuestFilePath, expires: time.Now().Add(5 * time.Minute)})
	var attrs types.BaseGuestFileAttributes = &types.GuestFileAttributes{}
	if isWindowsGuest(vm) {
		attrs = &types.GuestWindowsFileAttributes{}
	}
	body.Res = &types.InitiateFileTransferFromGuestResponse{Returnval: types.FileTransferInformation{
		Attributes: attrs, Size: int64(len(data)), Url: u}}
	return body
}

func (w *Host) fileToGuest(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	req := m.Body.(*types.InitiateFileTransferToGuest)
	body := &methods.InitiateFileTransferToGuestBody{}
	vm, f := w.guestCheck(req.Vm, req.Auth)
	if f != nil {
		body.Fault_ = f
		return body
	}
	g := w.guest(vm)
	guestMu.Lock()
	_, exists := g.Files[guestPathKey(vm, req.GuestFilePath)]
	guestMu.Unlock()
	if exists && !req.Overwrite {
		body.Fault_ = fault("", withMsg(&types.FileAlreadyExists{FileFault: types.FileFault{File: req.GuestFilePath}},
			"file "+req.GuestFilePath+" already exists in the guest of "+vm.Name))
		return body
	}
	u := w.transferURL(&guestTransfer{vm: vm.Self, path: req.GuestFilePath, upload: true, expires: time.Now().Add(5 * time.Minute)})
	body.Res = &types.InitiateFileTransferToGuestResponse{Returnval: u}
	return body
}

func (w *Host) deleteFileInGuest(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	req := m.Body.(*types.DeleteFileInGuest)
	body := &methods.DeleteFileInGuestBody{}
	vm, f := w.guestCheck(req.Vm, req.Auth)
	if f != nil {
		body.Fault_ = f
		return body
	}
	g := w.guest(vm)
	k := guestPathKey(vm, req.FilePath)
	guestMu.Lock()
	_, ok := g.Files[k]
	delete(g.Files, k)
	guestMu.Unlock()
	if !ok {
		body.Fault_ = fault("", withMsg(&types.FileNotFound{FileFault: types.FileFault{File: req.FilePath}},
			"file "+req.FilePath+" was not found in the guest of "+vm.Name))
		return body
	}
	body.Res = &types.DeleteFileInGuestResponse{}
	return body
}

func (w *Host) serveGuestFile(rw http.ResponseWriter, r *http.Request) {
	tok := r.URL.Query().Get("id")
	guestMu.Lock()
	t, ok := transfers[tok]
	if ok {
		delete(transfers, tok) // one-shot
	}
	guestMu.Unlock()
	if !ok || time.Now().After(t.expires) {
		http.Error(rw, "unknown or expired transfer", http.StatusNotFound)
		return
	}
	vm, ok := simulator.Map.Get(t.vm).(*simulator.VirtualMachine)
	if !ok {
		http.Error(rw, "VM gone", http.StatusNotFound)
		return
	}
	g := w.guest(vm)
	k := guestPathKey(vm, t.path)
	switch {
	case t.upload && (r.Method == http.MethodPut || r.Method == http.MethodPost):
		b, err := ioutil.ReadAll(r.Body)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		guestMu.Lock()
		g.Files[k] = b
		guestMu.Unlock()
		rw.WriteHeader(http.StatusOK)
	case !t.upload && r.Method == http.MethodGet:
		guestMu.Lock()
		b := append([]byte(nil), g.Files[k]...)
		guestMu.Unlock()
		rw.Header().Set("Content-Type", "application/octet-stream")
		_, _ = rw.Write(b)
	default:
		http.Error(rw, "wrong method for this transfer", http.StatusMethodNotAllowed)
	}
}
