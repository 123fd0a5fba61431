package rest

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/api"
)

// sessionCookie is the web page's session cookie: its __Host- prefix has
// browsers take it only Secure, for Path=/ and with no Domain, so no
// other host (a sibling subdomain) can set or shadow it. csrfHeader
// carries the session's CSRF token on unsafe methods.
const (
	sessionCookie = "__Host-astrolabe_session"
	csrfHeader    = "X-CSRF-Token"
)

// sessionLifetime is how long a session lasts from its login; maxSessions
// bounds how many the appliance keeps (the oldest goes first).
const (
	sessionLifetime = 8 * time.Hour
	maxSessions     = 1000
)

type session struct {
	csrf    string
	expires time.Time
}

// sessions are the browser sessions, in memory: they end with the
// appliance, whose restart asks for the token again.
type sessions struct {
	mu       sync.Mutex
	byID     map[string]session
	lifetime time.Duration
	max      int
}

func newSessions(lifetime time.Duration, max int) *sessions {
	return &sessions{byID: map[string]session{}, lifetime: lifetime, max: max}
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// create starts a session; it drops expired ones, and the oldest where
// too many are kept.
func (ss *sessions) create(now time.Time) (id string, s session) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var oldest string
	for k, v := range ss.byID {
		if !now.Before(v.expires) {
			delete(ss.byID, k)
		} else if oldest == "" || v.expires.Before(ss.byID[oldest].expires) {
			oldest = k
		}
	}
	if len(ss.byID) >= ss.max {
		delete(ss.byID, oldest)
	}
	id, s = randomToken(), session{csrf: randomToken(), expires: now.Add(ss.lifetime)}
	ss.byID[id] = s
	return id, s
}

func (ss *sessions) get(id string, now time.Time) (session, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.byID[id]
	if !ok || !now.Before(s.expires) {
		delete(ss.byID, id)
		return session{}, false
	}
	return s, true
}

func (ss *sessions) end(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.byID, id)
}

// public tells the requests that need no credentials.
func public(r *http.Request) bool {
	return r.URL.Path == "/healthz" || r.URL.Path == "/v1/session" && r.Method == http.MethodPost
}

// safeMethod tells the methods a CSRF token is not needed for: they
// change nothing.
func safeMethod(m string) bool { return m == http.MethodGet || m == http.MethodHead }

// authorized checks a request's credentials: the bearer token where it
// has an Authorization header, else the session cookie, with the CSRF
// token on unsafe methods. It answers the status and message of a
// refusal, 0 if the request may go on.
func (s *server) authorized(r *http.Request) (int, string) {
	if h := r.Header.Get("Authorization"); h != "" {
		if ValidToken(h, s.cfg.Token) {
			return 0, ""
		}
		return http.StatusUnauthorized, "missing or wrong bearer token"
	}
	sess, ok := s.requestSession(r)
	if !ok {
		return http.StatusUnauthorized, "missing or wrong bearer token or session"
	}
	if !safeMethod(r.Method) && subtle.ConstantTimeCompare([]byte(r.Header.Get(csrfHeader)), []byte(sess.csrf)) != 1 {
		return http.StatusForbidden, "missing or wrong CSRF token (" + csrfHeader + ")"
	}
	return 0, ""
}

// requestSession is the valid session of the request's cookie.
func (s *server) requestSession(r *http.Request) (session, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return session{}, false
	}
	return s.sessions.get(c.Value, time.Now())
}

var errNoSession = errors.New("no session: log in")

func cookie(value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: sessionCookie, Value: value, Path: "/", MaxAge: maxAge,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode}
}

func (s *server) Login(ctx context.Context, req api.LoginRequestObject) (api.LoginResponseObject, error) {
	if req.Body == nil || req.Body.Token == "" {
		return nil, badRequest("the token is missing")
	}
	if !ValidToken("Bearer "+req.Body.Token, s.cfg.Token) {
		s.log.Info("web login refused", caller(ctx))
		return api.Login401JSONResponse{UnauthorizedJSONResponse: api.UnauthorizedJSONResponse{
			Code: http.StatusUnauthorized, Message: "wrong token"}}, nil
	}
	id, sess := s.sessions.create(time.Now())
	s.log.Info("web login", caller(ctx))
	c := cookie(id, int(s.sessions.lifetime/time.Second)).String()
	return api.Login200JSONResponse{Body: api.Session{CsrfToken: sess.csrf, Expires: sess.expires.UTC()},
		Headers: api.Login200ResponseHeaders{SetCookie: &c}}, nil
}

func (s *server) GetSession(ctx context.Context, _ api.GetSessionRequestObject) (api.GetSessionResponseObject, error) {
	r, _ := ctx.Value(requestKey{}).(*http.Request)
	sess, ok := session{}, false
	if r != nil {
		sess, ok = s.requestSession(r)
	}
	if !ok {
		return api.GetSession401JSONResponse{UnauthorizedJSONResponse: api.UnauthorizedJSONResponse{
			Code: http.StatusUnauthorized, Message: errNoSession.Error()}}, nil
	}
	return api.GetSession200JSONResponse{CsrfToken: sess.csrf, Expires: sess.expires.UTC()}, nil
}

func (s *server) Logout(ctx context.Context, _ api.LogoutRequestObject) (api.LogoutResponseObject, error) {
	if r, _ := ctx.Value(requestKey{}).(*http.Request); r != nil {
		if c, err := r.Cookie(sessionCookie); err == nil {
			s.sessions.end(c.Value)
		}
	}
	c := cookie("", -1).String()
	return api.Logout204Response{Headers: api.Logout204ResponseHeaders{SetCookie: &c}}, nil
}
