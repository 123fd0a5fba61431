package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"
)

// decodeJob reads one job as the API takes it: a JSON object whose keys
// are exactly the fields' names (encoding/json would take "Daily" for
// "daily"), each value of its field's type. Its errors name the field in
// plain words, not Go's types.
func decodeJob(b []byte) (*Job, error) {
	j, miscased, err := decodeJobKeys(b)
	if err != nil {
		return nil, err
	}
	if len(miscased) > 0 {
		return nil, miscased[0]
	}
	return j, nil
}

// decodeJobKeys reads one job as jobs.json spells it: a key that is a
// field's name in another case is taken for it, as older versions did
// (encoding/json's rule), and returned in miscased.
func decodeJobKeys(b []byte) (j *Job, miscased []error, err error) {
	if miscased, err = checkKeys(b, reflect.TypeFor[Job](), ""); err != nil {
		return nil, nil, err
	}
	if err := decodeStrict(b, &j); err != nil {
		return nil, nil, plainJSONError(err, "a JSON object (one job)")
	}
	if j == nil {
		return nil, nil, errors.New("want a JSON object (one job), not null")
	}
	return j, miscased, nil
}

// decodeStrict decodes b, which must be one JSON value, into v, refusing
// fields v has not.
func decodeStrict(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if _, err := d.Token(); err != io.EOF {
		return errors.New("more after the JSON value")
	}
	return nil
}

// checkKeys refuses a key of the JSON object b that is the JSON name of
// no field of the struct t, in nested objects too (path names the
// object), and returns those that are one in another case. Anything but
// an object is left to the decoder.
func checkKeys(b []byte, t reflect.Type, path string) (miscased []error, err error) {
	var obj map[string]json.RawMessage
	if json.Unmarshal(b, &obj) != nil || obj == nil {
		return nil, nil
	}
	fields := map[string]reflect.Type{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.IsExported() && name != "" && name != "-" {
			fields[name] = f.Type
		}
	}
	for _, key := range slices.Sorted(maps.Keys(obj)) {
		ft, ok := fields[key]
		if !ok {
			name, found := foldField(fields, key)
			if !found {
				return nil, fmt.Errorf("unknown field %q", path+key)
			}
			miscased = append(miscased, fmt.Errorf("unknown field %q: did you mean %q? (field names are case-sensitive)", path+key, path+name))
			ft = fields[name]
		}
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct {
			nested, err := checkKeys(obj[key], ft, path+key+".")
			if err != nil {
				return nil, err
			}
			miscased = append(miscased, nested...)
		}
	}
	return miscased, nil
}

// foldField returns the name of fields that is key in another case.
func foldField(fields map[string]reflect.Type, key string) (string, bool) {
	for name := range fields {
		if strings.EqualFold(name, key) {
			return name, true
		}
	}
	return "", false
}

// plainJSONError says what encoding/json's err says in the words of
// jobs.json: the field and the JSON type wanted, not Go's struct and
// types; whole is what the whole value should be.
func plainJSONError(err error, whole string) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		got := te.Value
		if te.Field == "" {
			return fmt.Errorf("want %s, not %s", whole, got)
		}
		return fmt.Errorf("%s: want %s, not %s", te.Field, jsonKind(te.Type), got)
	case errors.As(err, &se):
		return fmt.Errorf("not JSON (at byte %d): %s", se.Offset, strings.TrimPrefix(se.Error(), "json: "))
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return errors.New("not JSON: it ends too soon")
	}
	return errors.New(strings.TrimPrefix(err.Error(), "json: "))
}

// jsonKind names the JSON value a Go type is decoded from.
func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "a JSON list"
	case reflect.Struct, reflect.Map:
		return "a JSON object"
	}
	return "another JSON value"
}
