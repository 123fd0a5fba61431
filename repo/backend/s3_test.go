package backend

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFile writes a test's file, or fails it.
func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestS3ProfileWithoutKeys: a profile without keys of its own (one that
// assumes a role, or a [default] with only a region) is an error naming
// the profile and the file, not anonymous requests denied later.
func TestS3ProfileWithoutKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	file := filepath.Join(dir, "credentials")
	writeFile(t, file, "[nokeys]\nregion = us-east-1\n"+
		"[rolebased]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = base\n"+
		"[base]\naws_access_key_id = AK\naws_secret_access_key = SK\n")
	if _, err := (S3Config{Profile: "base", CredentialsFile: file}).credentials(ctx); err != nil {
		t.Fatalf("a profile with keys: %v", err)
	}
	for _, p := range []string{"nokeys", "rolebased"} {
		_, err := S3Config{Profile: p, CredentialsFile: file}.credentials(ctx)
		t.Logf("%s: %v", p, err)
		if err == nil || !strings.Contains(err.Error(), `profile "`+p+`" in `+file+" has no aws_access_key_id") || !strings.Contains(err.Error(), "role_arn") {
			t.Errorf("profile %s, without keys: %v", p, err)
		}
	}

	// No keys anywhere: the AWS config file's [default] has a region only.
	home := t.TempDir()
	if err := os.Mkdir(filepath.Join(home, ".aws"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(home, ".aws", "config"), "[default]\nregion = eu-west-1\n")
	t.Setenv("HOME", home)
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_PROFILE"} {
		t.Setenv(v, "")
	}
	_, err := S3Config{}.credentials(ctx)
	t.Logf("no keys, a config file with a region: %v", err)
	if err == nil || !strings.Contains(err.Error(), `profile "default"`) || !strings.Contains(err.Error(), filepath.Join(home, ".aws", "config")) {
		t.Errorf("no keys, a config file with a region only: %v", err)
	}
}

// TestS3CredentialsFileUnparsed: a credentials file that cannot be
// parsed is told by its name and line, never with its text: the line
// may hold the secret key (a typo, "=" left out).
func TestS3CredentialsFileUnparsed(t *testing.T) {
	ctx := context.Background()
	const secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
	bad := filepath.Join(t.TempDir(), "credentials")
	writeFile(t, bad, "[site2]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key "+secret+"\n")
	_, err := S3Config{Profile: "site2", CredentialsFile: bad}.credentials(ctx)
	t.Logf("malformed file: %v", err)
	if err == nil || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "wJalr") {
		t.Fatalf("malformed credentials file: %v; want an error without the secret", err)
	}
	if !strings.Contains(err.Error(), "cannot parse "+bad+", line 3") {
		t.Errorf("malformed credentials file: %v; want its name and line", err)
	}
	// Through the default files too.
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", bad)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"} {
		t.Setenv(v, "")
	}
	_, err = S3Config{}.credentials(ctx)
	t.Logf("malformed default file: %v", err)
	if err == nil || strings.Contains(err.Error(), "wJalr") || !strings.Contains(err.Error(), "cannot parse "+bad) {
		t.Errorf("malformed default credentials file: %v", err)
	}
	// A profile missing is still told as such.
	good := filepath.Join(t.TempDir(), "credentials")
	writeFile(t, good, "[site1]\naws_access_key_id = AK\naws_secret_access_key = SK\n")
	_, err = S3Config{Profile: "site3", CredentialsFile: good}.credentials(ctx)
	t.Logf("missing profile: %v", err)
	if err == nil || !strings.Contains(err.Error(), `"site3" does not exist`) {
		t.Errorf("missing profile: %v", err)
	}
}
