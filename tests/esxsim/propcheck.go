package main

// Property paths checked as ESXi and vCenter check them: a PropertySpec that asks a type
// for a path the type does not have (a Task's "runtime.question", a misspelt
// "runtime.powerstate", a path into an array or through a managed object reference) makes
// CreateFilter / RetrieveProperties(Ex) fail as a whole with InvalidProperty. The
// simulator would answer anyway, with the path in the object's missingSet, which pyVmomi
// drops silently: a client bug esxsim would hide and a real host would not.
//
// The check walks the declared type (govmomi's vim25/mo struct of the spec's type, then
// the data objects' xml names); an unset value is not an invalid path. Where a property is
// declared with a polymorphic data type (an interface in Go), the rest of the path is not
// checked: the subtype is only known from the value.

import (
	"reflect"
	"strings"

	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

var morefType = reflect.TypeOf(types.ManagedObjectReference{})

// moType is the Go struct of a managed object type name (nil if govmomi does not know it).
func moType(name string) (typ reflect.Type) {
	defer func() {
		if recover() != nil {
			typ = nil // govmomi panics on an unknown type name
		}
	}()
	v, err := mo.ObjectContentToType(types.ObjectContent{Obj: types.ManagedObjectReference{Type: name}})
	if err != nil || v == nil {
		return nil
	}
	return reflect.TypeOf(v)
}

// xmlName is the property name of a struct field ("" if it has none).
func xmlName(f reflect.StructField) string {
	if n := f.Tag.Get("mo"); n != "" {
		return n
	}
	return strings.Split(f.Tag.Get("xml"), ",")[0]
}

// fieldNamed finds a property of a struct, in embedded (base type) structs too.
func fieldNamed(typ reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		if f.Anonymous {
			t := f.Type
			if t.Kind() == reflect.Ptr {
				t = t.Elem()
			}
			if t.Kind() == reflect.Struct {
				if g, ok := fieldNamed(t, name); ok {
					return g, true
				}
			}
			continue
		}
		if xmlName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// validPath says whether a managed object type has the property path (dot-separated).
func validPath(typ reflect.Type, path string) bool {
	if path == "" {
		return false
	}
	parts := strings.Split(path, ".")
	for i, name := range parts {
		f, ok := fieldNamed(typ, name)
		if !ok {
			return false
		}
		if i == len(parts)-1 {
			return true
		}
		t := f.Type
		if t.Kind() == reflect.Ptr {
			t = t.Elem()
		}
		switch {
		case t.Kind() == reflect.Interface:
			return true // a polymorphic data object: the subtype decides (see above)
		case t == morefType, t.Kind() == reflect.Slice, t.Kind() != reflect.Struct:
			return false // no path into a reference, an array or a scalar
		}
		typ = t
	}
	return true
}

// invalidProperty returns the first path of specs that its type does not have, or "".
func invalidProperty(specs []types.PropertyFilterSpec) (typeName, path string) {
	for _, s := range specs {
		for _, ps := range s.PropSet {
			typ := moType(ps.Type)
			if typ == nil {
				continue // a type govmomi does not know: left to the simulator
			}
			for _, p := range ps.PathSet {
				if !validPath(typ, p) {
					return ps.Type, p
				}
			}
		}
	}
	return "", ""
}

// filterSpecs are the PropertyFilterSpecs of a property collector request (nil for other methods).
func filterSpecs(body interface{}) []types.PropertyFilterSpec {
	switch b := body.(type) {
	case *types.CreateFilter:
		return []types.PropertyFilterSpec{b.Spec}
	case *types.RetrieveProperties:
		return b.SpecSet
	case *types.RetrievePropertiesEx:
		return b.SpecSet
	}
	return nil
}
