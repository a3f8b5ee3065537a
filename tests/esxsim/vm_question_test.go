package main

import (
	"testing"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// The "moved or copied" question in the shape a real ESXi host gives it: an opaque id
// ("_vmx1"), what it asks only in message[].id, and the choice labels and summaries that
// `vim-cmd vmsvc/message` lists ("1. button.uuid.movedTheVM (I Moved It)").
func TestUUIDQuestionHasTheRealShape(t *testing.T) {
	q := uuidQuestion(1)
	if q.Id != "_vmx1" {
		t.Fatalf("id %q: a real host's question id is opaque (_vmx1)", q.Id)
	}
	if len(q.Message) != 1 || q.Message[0].Id != "msg.uuid.altered" || q.Message[0].Text != q.Text {
		t.Fatalf("message %+v", q.Message)
	}
	want := [][3]string{{"0", "button.uuid.cancel", "Cancel"}, {"1", "button.uuid.movedTheVM", "I Moved It"},
		{"2", "button.uuid.copiedTheVM", "I Copied It"}}
	if len(q.Choice.ChoiceInfo) != len(want) {
		t.Fatalf("choices %+v", q.Choice.ChoiceInfo)
	}
	for i, c := range q.Choice.ChoiceInfo {
		d := c.GetElementDescription()
		if got := [3]string{d.Key, d.Label, d.Summary}; got != want[i] {
			t.Fatalf("choice %d: %v, want %v", i, got, want[i])
		}
	}
	if q.Choice.DefaultIndex != 2 {
		t.Fatalf("default %d: I Copied It is the default", q.Choice.DefaultIndex)
	}
	if uuidQuestion(2).Id != "_vmx2" {
		t.Fatal("question ids are numbered per VMX process")
	}
}

func invalidArgOf(t *testing.T, r soap.HasFault) string {
	t.Helper()
	f := r.Fault()
	if f == nil {
		t.Fatal("want a fault")
	}
	ia, ok := f.Detail.Fault.(*types.InvalidArgument)
	if !ok {
		t.Fatalf("want InvalidArgument, got %T (%s)", f.Detail.Fault, f.String)
	}
	return ia.InvalidProperty
}

// AnswerVM takes the question's own id and one of its choice keys; the power-on waiting on
// the question learns the chosen choice by its label. A stale id or a key that is not a
// choice is InvalidArgument, as the API reference documents for AnswerVM.
func TestAnswerVMTakesTheQuestionIdAndAChoiceKey(t *testing.T) {
	sim, err := NewSim(Config{Listen: "127.0.0.1:18443", Hostname: "esx-q", DataDir: t.TempDir(),
		IQN: "iqn.1998-01.com.vmware:esx-q", Username: "root", Password: "pw", MountRegistry: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	w := sim.hosts[0]
	vm := &simulator.VirtualMachine{}
	vm.Self = types.ManagedObjectReference{Type: "VirtualMachine", Value: "vm-question"}
	vm.Name = "app01"
	simulator.Map.Put(vm)
	defer simulator.Map.Remove(vm.Self)

	x := w.extra(vm)
	w.mu.Lock()
	x.question = uuidQuestion(1)
	x.answerCh = make(chan string, 1)
	ch := x.answerCh
	w.mu.Unlock()
	answer := func(id, key string) soap.HasFault {
		return w.answerVM(nil, &simulator.Method{This: vm.Self, Name: "AnswerVM",
			Body: &types.AnswerVM{This: vm.Self, QuestionId: id, AnswerChoice: key}})
	}

	if p := invalidArgOf(t, answer("msg.uuid.altered", "1")); p != "questionId" {
		t.Fatalf("an id that is not the pending question's: invalid %q", p)
	}
	if p := invalidArgOf(t, answer("_vmx1", "button.uuid.movedTheVM")); p != "answerChoice" {
		t.Fatalf("a label is not a key: invalid %q", p)
	}
	if p := invalidArgOf(t, answer("_vmx1", "3")); p != "answerChoice" {
		t.Fatalf("key 3 is no choice: invalid %q", p)
	}
	select {
	case got := <-ch:
		t.Fatalf("a refused answer reached the power-on: %q", got)
	default:
	}

	// The power-on task's side: it receives the label, then clears the question.
	go func() {
		label := <-ch
		if label != labelUUIDMoved {
			t.Errorf("key 1 is %q, want %s", label, labelUUIDMoved)
		}
		w.mu.Lock()
		x.question = nil
		w.mu.Unlock()
	}()
	start := time.Now()
	if r := answer("_vmx1", "1"); r.Fault() != nil {
		t.Fatalf("answer refused: %s", r.Fault().String)
	}
	w.mu.Lock()
	cleared := x.question == nil
	w.mu.Unlock()
	if !cleared || time.Since(start) > 900*time.Millisecond {
		t.Fatal("AnswerVM returned before the question was cleared")
	}
}
