package main

// The SOAP front end: every /sdk request goes to the govmomi simulator, except the
// few methods esxsim intercepts (on objects it cannot wrap without breaking the
// simulator's own type assertions, e.g. VirtualMachine and Folder). After each
// request that may change datastore files, the files are synced to their LUNs
// before the response is sent, so a client that saw a task finish can copy the LUN.

import (
	"bytes"
	"context"
	"fmt"
	"io/ioutil"
	"log"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// Interceptor handles one SOAP method in place of the simulator.
type Interceptor func(ctx *simulator.Context, m *simulator.Method) soap.HasFault

var readOnlyMethods = map[string]bool{
	"RetrieveProperties": true, "RetrievePropertiesEx": true, "ContinueRetrievePropertiesEx": true,
	"WaitForUpdates": true, "WaitForUpdatesEx": true, "CheckForUpdates": true, "CreateFilter": true,
	"DestroyPropertyFilter": true, "RetrieveServiceContent": true, "Login": true, "Logout": true,
	"CurrentTime": true, "CreateContainerView": true, "DestroyView": true, "QueryEvents": true,
	"CreateCollectorForEvents": true, "ReadNextEvents": true, "ReadPreviousEvents": true,
	"CreatePropertyCollector": true, "DestroyPropertyCollector": true, "SessionIsActive": true,
	"QueryUnresolvedVmfsVolumes": true, "QueryUnresolvedVmfsVolume": true, "QueryBoundVnics": true,
	"QueryCandidateNics": true, "QueryVmfsDatastoreCreateOptions": true, "QueryAvailableDisksForVmfs": true,
}

// internalCtx makes a Context for calling simulator methods from an interceptor.
func internalCtx(this types.ManagedObjectReference) *simulator.Context {
	return &simulator.Context{
		Context: context.Background(),
		Session: &simulator.Session{
			UserSession: types.UserSession{Key: uuid.New().String(), UserName: "root"},
			Registry:    simulator.NewRegistry(),
		},
		Map:    simulator.Map,
		Caller: &this,
	}
}

func (w *Sim) soapHandler() http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			rw.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		body, err := ioutil.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			rw.WriteHeader(http.StatusBadRequest)
			return
		}
		r.URL.Path = "/sdk"
		method, perr := simulator.UnmarshalBody(types.TypeFunc(), body)
		name := ""
		if perr == nil {
			name = method.Name
			if typ, path := invalidProperty(filterSpecs(method.Body)); path != "" {
				writeSOAP(rw, name, &faultBody{Reason: fault("", withMsg(&types.InvalidProperty{Name: path},
					"type "+typ+" has no property "+path))})
				return
			}
			if h := w.interceptor(method); h != nil {
				if _, cerr := r.Cookie(soap.SessionCookieName); cerr != nil {
					writeSOAP(rw, name, &faultBody{Reason: simulator.Fault("", &types.NotAuthenticated{
						NoPermission: types.NoPermission{Object: method.This, PrivilegeId: "System.View"}})})
					return
				}
				res := h(internalCtx(method.This), method)
				if !readOnlyMethods[name] {
					w.SyncAll()
				}
				writeSOAP(rw, name, res)
				return
			}
		}
		r.Body = ioutil.NopCloser(bytes.NewReader(body))
		rec := httptest.NewRecorder()
		if !serveRecovering(w.svc, rec, r) {
			// the 0.24 simulator panics on some requests (e.g. Fetch of an unset property)
			rec = httptest.NewRecorder()
			if name == "Fetch" {
				writeSOAP(rec, name, &fetchBody{Res: &FetchResponse{}})
			} else {
				writeSOAP(rec, name, &faultBody{Reason: fault("esxsim: internal error in "+name, &types.SystemError{Reason: "simulator panic"})})
			}
		}
		if name != "" && !readOnlyMethods[name] {
			w.SyncAll()
		}
		for k, v := range rec.Header() {
			rw.Header()[k] = v
		}
		rw.WriteHeader(rec.Code)
		_, _ = rw.Write(rec.Body.Bytes())
	})
}

// syncAfter wraps a handler that may change datastore files (the /folder endpoint).
func (w *Sim) syncAfter(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.SyncAll()
		}
		for k, v := range rec.Header() {
			rw.Header()[k] = v
		}
		rw.WriteHeader(rec.Code)
		_, _ = rw.Write(rec.Body.Bytes())
	})
}

// interceptor finds esxsim's handler for m on the host the call concerns (the VM's
// host, the host that mounts a datastore, ...), or nil to let the simulator answer.
func (w *Sim) interceptor(m *simulator.Method) Interceptor {
	key := m.This.Type + "." + m.Name
	if w.vcenter && key == "Folder.RegisterVM_Task" {
		return w.registerVM
	}
	h := w.hostFor(m)
	if f, ok := h.intercept[key]; ok {
		return f
	}
	if strings.HasSuffix(m.Name, "_Task") {
		return h.genericTask
	}
	return nil
}

type faultBody struct {
	Reason *soap.Fault `xml:"http://schemas.xmlsoap.org/soap/envelope/ Fault,omitempty"`
}

func (b *faultBody) Fault() *soap.Fault { return b.Reason }

// soapFaultOut mirrors the simulator's fault encoding (detail element named <Type>Fault).
type soapFaultOut struct {
	XMLName xml.Name `xml:"soapenv:Fault"`
	Code    string   `xml:"faultcode"`
	String  string   `xml:"faultstring"`
	Detail  struct {
		Fault *faultDetailOut
	} `xml:"detail"`
}

type faultDetailOut struct {
	Fault types.AnyType
}

func (d *faultDetailOut) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	kind := reflect.TypeOf(d.Fault).Elem().Name()
	start.Name.Local = kind + "Fault"
	start.Attr = append(start.Attr,
		xml.Attr{Name: xml.Name{Local: "xmlns"}, Value: "urn:" + vim25.Namespace},
		xml.Attr{Name: xml.Name{Local: "xsi:type"}, Value: kind})
	return e.EncodeElement(d.Fault, start)
}

type responseOut struct {
	Body soap.HasFault
}

func (r *responseOut) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	val := reflect.ValueOf(r.Body).Elem().FieldByName("Res")
	if !val.IsValid() || val.IsNil() {
		return fmt.Errorf("%T: invalid response", r.Body)
	}
	res := xml.StartElement{Name: xml.Name{Space: "urn:" + vim25.Namespace, Local: val.Elem().Type().Name()}}
	if err := e.EncodeToken(start); err != nil {
		return err
	}
	if err := e.EncodeElement(val.Interface(), res); err != nil {
		return err
	}
	return e.EncodeToken(start.End())
}

type envelopeOut struct {
	XMLName xml.Name    `xml:"soapenv:Envelope"`
	Enc     string      `xml:"xmlns:soapenc,attr"`
	Env     string      `xml:"xmlns:soapenv,attr"`
	XSD     string      `xml:"xmlns:xsd,attr"`
	XSI     string      `xml:"xmlns:xsi,attr"`
	Body    interface{} `xml:"soapenv:Body"`
}

func writeSOAP(rw http.ResponseWriter, name string, res soap.HasFault) {
	var body interface{}
	status := http.StatusOK
	if f := res.Fault(); f != nil {
		status = http.StatusInternalServerError
		out := &soapFaultOut{Code: f.Code, String: f.String}
		out.Detail.Fault = &faultDetailOut{f.Detail.Fault}
		body = struct{ Fault *soapFaultOut }{out}
	} else {
		body = &responseOut{res}
	}
	var buf bytes.Buffer
	fmt.Fprint(&buf, xml.Header)
	e := xml.NewEncoder(&buf)
	err := e.Encode(&envelopeOut{
		Enc:  "http://schemas.xmlsoap.org/soap/encoding/",
		Env:  "http://schemas.xmlsoap.org/soap/envelope/",
		XSD:  "http://www.w3.org/2001/XMLSchema",
		XSI:  "http://www.w3.org/2001/XMLSchema-instance",
		Body: body,
	})
	if err == nil {
		err = e.Flush()
	}
	if err != nil {
		log.Printf("encoding %s response: %v", name, err)
		rw.WriteHeader(http.StatusInternalServerError)
		return
	}
	rw.Header().Set("Content-Type", "text/xml; charset=utf-8")
	rw.WriteHeader(status)
	_, _ = rw.Write(buf.Bytes())
}

// fault builds a SOAP fault with a message.
func fault(msg string, f types.BaseMethodFault) *soap.Fault {
	return simulator.Fault(msg, f)
}

// msgFault sets faultMessage too, so pyvmomi shows the message (fault.msg).
func withMsg(f types.BaseMethodFault, msg string) types.BaseMethodFault {
	mf := f.GetMethodFault()
	mf.FaultMessage = append(mf.FaultMessage, types.LocalizableMessage{Key: "esxsim", Message: msg})
	return f
}

func hasPrefixAny(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// fetchResponse mirrors the simulator's internal FetchResponse.
type FetchResponse struct {
	Returnval types.AnyType `xml:"returnval,omitempty,typeattr"`
}

type fetchBody struct {
	Res    *FetchResponse `xml:"FetchResponse,omitempty"`
	Fault_ *soap.Fault    `xml:"http://schemas.xmlsoap.org/soap/envelope/ Fault,omitempty"`
}

func (b *fetchBody) Fault() *soap.Fault { return b.Fault_ }

// genericTask runs a simulator task method and makes sure the task's entity is a
// ManagedEntity (the simulator uses e.g. the snapshot or FileManager, which pyvmomi rejects).
func (w *Host) genericTask(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	res := callOriginal(ctx, m)
	fixTaskEntity(res, w)
	return res
}

func fixTaskEntity(res soap.HasFault, w *Host) {
	t, ok := taskResult(res)
	if !ok || t.Info.Entity == nil {
		return
	}
	obj := simulator.Map.Get(*t.Info.Entity)
	if _, isEntity := obj.(mo.Entity); isEntity {
		return
	}
	ref := w.host.Self
	name := w.host.Name
	if snap, ok := obj.(*simulator.VirtualMachineSnapshot); ok {
		ref = snap.Vm
		if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
			name = vm.Name
		}
	}
	simulator.Map.Update(t, []types.PropertyChange{
		{Name: "info.entity", Val: ref},
		{Name: "info.entityName", Val: name},
	})
}

func serveRecovering(svc *simulator.Service, rec http.ResponseWriter, r *http.Request) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			log.Printf("recovered from simulator panic: %v", p)
			ok = false
		}
	}()
	svc.ServeSDK(rec, r)
	return true
}
