package vcsimtest

import (
	"bytes"
	"io"
	"net/http"
	"reflect"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// AnswerFunc answers one call: req is the decoded request (a
// *types.<Method>); it returns the response's returnval, or a fault.
type AnswerFunc func(req any) (any, types.BaseMethodFault)

// Answer makes the simulator's SOAP endpoint answer calls of method with
// fn: for methods vcsim does not have (QueryChangedDiskAreas, say). The
// simulator's own dispatch cannot be extended for objects such as VMs: it
// asserts their types everywhere.
// A nil fn takes the answer away: the simulator answers again.
func (s *Sim) Answer(method string, fn AnswerFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fn == nil {
		delete(s.answers, method)
		return
	}
	s.answers[method] = fn
}

// intercept runs before the simulator's handler.
func (s *Sim) intercept(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/sdk" {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		s.mu.Lock()
		var fn AnswerFunc
		var name string
		for n, f := range s.answers {
			if bytes.Contains(body, []byte("<"+n+">")) || bytes.Contains(body, []byte("<"+n+" ")) {
				fn, name = f, n
			}
		}
		s.mu.Unlock()
		if fn == nil {
			next.ServeHTTP(w, r)
			return
		}
		m, err := simulator.UnmarshalBody(types.TypeFunc(), body)
		if err != nil || m.Name != name {
			next.ServeHTTP(w, r)
			return
		}
		res, fault := fn(m.Body)
		writeSOAP(w, name, res, fault)
	})
}

// writeSOAP writes a SOAP response or fault as vCenter does.
func writeSOAP(w http.ResponseWriter, method string, res any, fault types.BaseMethodFault) {
	var out bytes.Buffer
	out.WriteString(xml.Header)
	out.WriteString(`<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`)
	e := xml.NewEncoder(&out)
	status := http.StatusOK
	var err error
	if fault != nil {
		status = http.StatusInternalServerError
		kind := reflect.TypeOf(fault).Elem().Name()
		out.WriteString(`<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>` + kind + `</faultstring><detail>`)
		err = e.EncodeElement(fault, xml.StartElement{Name: xml.Name{Local: kind + "Fault"}, Attr: []xml.Attr{
			{Name: xml.Name{Local: "xmlns"}, Value: "urn:vim25"},
			{Name: xml.Name{Local: "xsi:type"}, Value: kind},
		}})
		e.Flush()
		out.WriteString(`</detail></soapenv:Fault>`)
	} else {
		out.WriteString(`<` + method + `Response xmlns="urn:vim25">`)
		err = e.EncodeElement(res, xml.StartElement{Name: xml.Name{Local: "returnval"}})
		e.Flush()
		out.WriteString(`</` + method + `Response>`)
	}
	out.WriteString(`</soapenv:Body></soapenv:Envelope>`)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	w.Write(out.Bytes())
}
