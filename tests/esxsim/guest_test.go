package main

import (
	"reflect"
	"strings"
	"testing"
)

func lower(s string) string { return strings.ToLower(s) }

func TestSplitArgsWindowsQuoting(t *testing.T) {
	got := splitArgs(`reg query "HKLM\SYSTEM\CurrentControlSet\Control\Session Manager" /v BootExecute`)
	want := []string{"reg", "query", `HKLM\SYSTEM\CurrentControlSet\Control\Session Manager`, "/v", "BootExecute"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q", got)
	}
	if got := splitArgs(`a "" b \"c\"`); !reflect.DeepEqual(got, []string{"a", "", "b", `"c"`}) {
		t.Fatalf("got %q", got)
	}
}

func TestSplitRedirect(t *testing.T) {
	cmd, target, app := splitRedirect(`reg query "K > x" /v V > "C:\Windows\Temp\o.txt" 2>&1`)
	if cmd != `reg query "K > x" /v V` || target != `C:\Windows\Temp\o.txt` || app {
		t.Fatalf("got %q %q %v", cmd, target, app)
	}
	if _, target, app := splitRedirect(`echo x >> C:\log.txt`); target != `C:\log.txt` || !app {
		t.Fatalf("append: %q %v", target, app)
	}
}

func TestRegQueryAddDelete(t *testing.T) {
	g := &guestState{Registry: map[string]map[string]*regValue{}, Files: map[string][]byte{}}
	g.setReg(sessionManagerKey, &regValue{Name: "BootExecute", Kind: "REG_MULTI_SZ", Data: []string{"autocheck autochk *", "sysprepDecrypter.exe"}})
	key := `HKLM\SYSTEM\CurrentControlSet\Control\Session Manager`
	out, code := g.reg([]string{"query", key, "/v", "bootexecute"})
	want := "\r\n" + sessionManagerKey + "\r\n    BootExecute    REG_MULTI_SZ    autocheck autochk *\\0sysprepDecrypter.exe\r\n\r\n"
	if code != 0 || out != want {
		t.Fatalf("query: %d %q", code, out)
	}
	if _, code := g.reg([]string{"add", key, "/v", "BootExecute", "/t", "REG_MULTI_SZ", "/d", `autocheck autochk *\0x.exe`}); code != 1 {
		t.Fatalf("add without /f must refuse to overwrite, got %d", code)
	}
	if _, code := g.reg([]string{"add", key, "/v", "BootExecute", "/t", "REG_MULTI_SZ", "/d", `autocheck autochk *\0x.exe`, "/f"}); code != 0 {
		t.Fatalf("add: %d", code)
	}
	v := g.Registry[lower(sessionManagerKey)]["bootexecute"]
	if !reflect.DeepEqual(v.Data, []string{"autocheck autochk *", "x.exe"}) || v.Name != "BootExecute" {
		t.Fatalf("after add: %+v", v)
	}
	if _, code := g.reg([]string{"delete", key, "/v", "BootExecute", "/f"}); code != 0 {
		t.Fatal("delete")
	}
	if out, code := g.reg([]string{"query", key, "/v", "BootExecute"}); code != 1 || out != regNotFound {
		t.Fatalf("query after delete: %d %q", code, out)
	}
}
