/*
 * A stand-in for libvixDiskLib for the binding's tests: the calls the
 * binding makes, over local raw files, checking their arguments as VDDK
 * does. Build: gcc -shared -fPIC -o libvixDiskLib.so fakevddk.c
 *
 * Disks: Open's path is a local file, except for connections to a First
 * Class Disk, where it is $FAKE_VDDK_ROOT/fcd/<id>-flat.vmdk (the flat
 * extent of a monolithicFlat VMDK, as the vcsim tests lay FCDs out); its
 * capacity is the one in the descriptor fcd/<id>.vmdk, and a writable open
 * creates a missing extent, as a new FCD's is. With
 * $FAKE_VDDK_RECORD set, ConnectEx appends what it was given to that file.
 * Asynchronous reads and writes are queued and done at Wait, so a caller
 * that does not wait, or frees its buffer early, gets wrong data. VDDK's
 * thread-safety rules are checked: calls on a handle, and Open and Close
 * anywhere, that overlap fail with VIX_E_OBJECT_IS_BUSY.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../vixdisklib.h"

static int initialised;

struct conn {
	int readOnly;
	char *fcd;          /* FCD uuid, or NULL for a VM */
	char transport[32]; /* the first of those asked for */
};

struct pending {
	uint64_t start, count;
	uint8_t *buf;
	int write;
	VixDiskLibCompletionCB cb;
	void *data;
};

struct disk {
	int fd;
	int readOnly;
	uint64_t sectors;
	char transport[32];
	int busy;
	struct pending queue[64];
	int queued;
};

/* Overlapping use of a handle, or of Open and Close, is the caller's bug:
 * enter fails when another thread is inside. The sleep in Open widens
 * the window so that the tests see it. */
static int enter(int *busy) { return __atomic_exchange_n(busy, 1, __ATOMIC_ACQUIRE) == 0; }
static void leave(int *busy) { __atomic_store_n(busy, 0, __ATOMIC_RELEASE); }
static int openClose;
#define ENTER(d) do { if (!enter(&(d)->busy)) return VIX_E_OBJECT_IS_BUSY; } while (0)

static char *dupstr(const char *s) { return s ? strdup(s) : NULL; }

VixError VixDiskLib_InitEx(uint32_t major, uint32_t minor, VixDiskLibGenericLogFunc *log,
                           VixDiskLibGenericLogFunc *warn, VixDiskLibGenericLogFunc *panic,
                           const char *libDir, const char *configFile) {
	if (major < 6) return VIX_E_NOT_SUPPORTED;
	initialised = 1;
	return VIX_OK;
}

void VixDiskLib_Exit(void) { initialised = 0; }

VixError VixDiskLib_ConnectEx(const VixDiskLibConnectParams *p, char readOnly, const char *snapshotRef,
                              const char *transportModes, VixDiskLibConnection *out) {
	if (!initialised) return VIX_E_FAIL;
	if (!p || !out || !p->serverName || p->credType != VIXDISKLIB_CRED_UID) return VIX_E_INVALID_ARG;
	if (p->specType == VIXDISKLIB_SPEC_VSTORAGE_OBJECT && !p->spec.vStorageObjSpec.id) return VIX_E_INVALID_ARG;
	if (p->specType == VIXDISKLIB_SPEC_VMX && !p->vmxSpec) return VIX_E_INVALID_ARG;
	const char *rec = getenv("FAKE_VDDK_RECORD");
	if (rec) {
		FILE *f = fopen(rec, "a");
		if (f) {
			fprintf(f, "server=%s port=%u thumbprint=%s user=%s password=%s spec=%d vmx=%s fcd=%s ds=%s ssid=%s snapshot=%s transports=%s readonly=%d\n",
			        p->serverName, p->port, p->thumbPrint ? p->thumbPrint : "", p->creds.uid.userName,
			        p->creds.uid.password, p->specType, p->vmxSpec ? p->vmxSpec : "",
			        p->specType == VIXDISKLIB_SPEC_VSTORAGE_OBJECT ? p->spec.vStorageObjSpec.id : "",
			        p->specType == VIXDISKLIB_SPEC_VSTORAGE_OBJECT && p->spec.vStorageObjSpec.datastoreMoRef ? p->spec.vStorageObjSpec.datastoreMoRef : "",
			        p->specType == VIXDISKLIB_SPEC_VSTORAGE_OBJECT && p->spec.vStorageObjSpec.ssId ? p->spec.vStorageObjSpec.ssId : "",
			        snapshotRef ? snapshotRef : "", transportModes ? transportModes : "", readOnly);
			fclose(f);
		}
	}
	struct conn *c = calloc(1, sizeof *c);
	c->readOnly = readOnly;
	const char *t = transportModes && *transportModes ? transportModes : "nbd";
	snprintf(c->transport, sizeof c->transport, "%.*s", (int)strcspn(t, ":"), t);
	if (p->specType == VIXDISKLIB_SPEC_VSTORAGE_OBJECT) c->fcd = dupstr(p->spec.vStorageObjSpec.id);
	*out = c;
	return VIX_OK;
}

VixError VixDiskLib_Disconnect(VixDiskLibConnection connection) {
	struct conn *c = connection;
	if (!c) return VIX_E_INVALID_ARG;
	free(c->fcd);
	free(c);
	return VIX_OK;
}

/* descriptorSectors reads an extent line ("RW <sectors> ...") of the
 * descriptor beside a flat extent "<x>-flat.vmdk": "<x>.vmdk". */
static uint64_t descriptorSectors(const char *flat) {
	char desc[4096], line[1024];
	size_t n = strlen(flat);
	if (n < 10 || n >= sizeof desc || strcmp(flat + n - 10, "-flat.vmdk") != 0) return 0;
	memcpy(desc, flat, n - 10);
	strcpy(desc + n - 10, ".vmdk");
	FILE *f = fopen(desc, "r");
	if (!f) return 0;
	unsigned long long sectors = 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "RW %llu", &sectors) == 1) break;
	fclose(f);
	return sectors;
}

static VixError diskOpen(struct conn *c, const char *path, uint32_t flags, VixDiskLibHandle *out);

VixError VixDiskLib_Open(const VixDiskLibConnection connection, const char *path, uint32_t flags,
                         VixDiskLibHandle *out) {
	struct conn *c = connection;
	if (!c || !out) return VIX_E_INVALID_ARG;
	if (!enter(&openClose)) return VIX_E_OBJECT_IS_BUSY;
	usleep(2000);
	VixError err = diskOpen(c, path, flags, out);
	leave(&openClose);
	return err;
}

static VixError diskOpen(struct conn *c, const char *path, uint32_t flags, VixDiskLibHandle *out) {
	char fcdPath[4096];
	if (c->fcd) {
		const char *root = getenv("FAKE_VDDK_ROOT");
		snprintf(fcdPath, sizeof fcdPath, "%s/fcd/%s-flat.vmdk", root ? root : ".", c->fcd);
		path = fcdPath;
	}
	int ro = c->readOnly || (flags & VIXDISKLIB_FLAG_OPEN_READ_ONLY);
	uint64_t sectors = 0;
	if (c->fcd && (sectors = descriptorSectors(fcdPath)) == 0) return VIX_E_FILE_NOT_FOUND;
	int fd = open(path, ro ? O_RDONLY : (c->fcd ? O_RDWR | O_CREAT : O_RDWR), 0644);
	if (fd < 0) return errno == ENOENT ? VIX_E_FILE_NOT_FOUND : VIX_E_FAIL;
	struct stat st;
	fstat(fd, &st);
	struct disk *d = calloc(1, sizeof *d);
	d->fd = fd;
	d->readOnly = ro;
	d->sectors = sectors ? sectors : st.st_size / VIXDISKLIB_SECTOR_SIZE;
	memcpy(d->transport, c->transport, sizeof d->transport);
	*out = d;
	return VIX_OK;
}

VixError VixDiskLib_Close(VixDiskLibHandle h) {
	struct disk *d = h;
	if (!d) return VIX_E_INVALID_ARG;
	if (!enter(&openClose)) return VIX_E_OBJECT_IS_BUSY;
	ENTER(d);
	if (d->queued) { /* requests still in flight */
		leave(&d->busy);
		leave(&openClose);
		return VIX_E_FAIL;
	}
	close(d->fd);
	free(d);
	leave(&openClose);
	return VIX_OK;
}

VixError VixDiskLib_GetInfo(VixDiskLibHandle h, VixDiskLibInfo **info) {
	struct disk *d = h;
	if (!d || !info) return VIX_E_INVALID_ARG;
	ENTER(d);
	*info = calloc(1, sizeof **info);
	(*info)->capacity = d->sectors;
	(*info)->numLinks = 1;
	leave(&d->busy);
	return VIX_OK;
}

void VixDiskLib_FreeInfo(VixDiskLibInfo *info) { free(info); }

const char *VixDiskLib_GetTransportMode(VixDiskLibHandle h) {
	struct disk *d = h;
	return d ? d->transport : NULL;
}

static VixError io(struct disk *d, uint64_t start, uint64_t count, uint8_t *buf, int write) {
	if (start + count > d->sectors) return VIX_E_INVALID_ARG;
	size_t len = count * VIXDISKLIB_SECTOR_SIZE, done = 0;
	off_t off = start * VIXDISKLIB_SECTOR_SIZE;
	while (done < len) {
		ssize_t n = write ? pwrite(d->fd, buf + done, len - done, off + done) : pread(d->fd, buf + done, len - done, off + done);
		if (n <= 0) return VIX_E_FAIL;
		done += n;
	}
	return VIX_OK;
}

VixError VixDiskLib_Read(VixDiskLibHandle h, VixDiskLibSectorType start, VixDiskLibSectorType count, uint8_t *buf) {
	struct disk *d = h;
	if (!d || !buf) return VIX_E_INVALID_ARG;
	ENTER(d);
	VixError err = io(d, start, count, buf, 0);
	leave(&d->busy);
	return err;
}

VixError VixDiskLib_Write(VixDiskLibHandle h, VixDiskLibSectorType start, VixDiskLibSectorType count, const uint8_t *buf) {
	struct disk *d = h;
	if (!d || !buf) return VIX_E_INVALID_ARG;
	if (d->readOnly) return VIX_E_FILE_READ_ONLY;
	ENTER(d);
	VixError err = io(d, start, count, (uint8_t *)buf, 1);
	leave(&d->busy);
	return err;
}

static VixError queue(VixDiskLibHandle h, VixDiskLibSectorType start, VixDiskLibSectorType count,
                      uint8_t *buf, int write, VixDiskLibCompletionCB cb, void *data) {
	struct disk *d = h;
	if (!d || !buf || !cb) return VIX_E_INVALID_ARG;
	ENTER(d);
	VixError err = VIX_ASYNC;
	if (d->queued == (int)(sizeof d->queue / sizeof d->queue[0]))
		err = VIX_E_FAIL;
	else
		d->queue[d->queued++] = (struct pending){start, count, buf, write, cb, data};
	leave(&d->busy);
	return err;
}

VixError VixDiskLib_ReadAsync(VixDiskLibHandle h, VixDiskLibSectorType start, VixDiskLibSectorType count,
                              uint8_t *buf, VixDiskLibCompletionCB cb, void *data) {
	return queue(h, start, count, buf, 0, cb, data);
}

VixError VixDiskLib_WriteAsync(VixDiskLibHandle h, VixDiskLibSectorType start, VixDiskLibSectorType count,
                               const uint8_t *buf, VixDiskLibCompletionCB cb, void *data) {
	return queue(h, start, count, (uint8_t *)buf, 1, cb, data);
}

/* Wait completes the queued requests; a read-only disk's writes fail
 * there, in their callbacks, as a server's refusal would. */
VixError VixDiskLib_Wait(VixDiskLibHandle h) {
	struct disk *d = h;
	if (!d) return VIX_E_INVALID_ARG;
	ENTER(d);
	for (int i = 0; i < d->queued; i++) {
		struct pending *p = &d->queue[i];
		VixError err = p->write && d->readOnly ? VIX_E_FILE_READ_ONLY : io(d, p->start, p->count, p->buf, p->write);
		p->cb(p->data, err);
	}
	d->queued = 0;
	leave(&d->busy);
	return VIX_OK;
}

VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle h, VixDiskLibSectorType start, VixDiskLibSectorType count,
                                         VixDiskLibSectorType chunk, VixDiskLibBlockList **out) {
	struct disk *d = h;
	if (!d || !out) return VIX_E_INVALID_ARG;
	if (chunk < VIXDISKLIB_MIN_CHUNK_SIZE || (chunk & (chunk - 1)) != 0) return VIX_E_INVALID_ARG;
	if (start % chunk || count % chunk || count / chunk > VIXDISKLIB_MAX_CHUNK_NUMBER) return VIX_E_INVALID_ARG;
	if (start + count > d->sectors) return VIX_E_INVALID_ARG;
	ENTER(d);
	off_t pos = start * VIXDISKLIB_SECTOR_SIZE, end = (start + count) * VIXDISKLIB_SECTOR_SIZE;
	off_t cb = chunk * VIXDISKLIB_SECTOR_SIZE;
	uint32_t n = 0, cap = 16;
	VixDiskLibBlockList *l = malloc(sizeof *l + cap * sizeof(VixDiskLibBlock));
	while (pos < end) {
		off_t data = lseek(d->fd, pos, SEEK_DATA);
		if (data < 0 || data >= end) break;
		off_t hole = lseek(d->fd, data, SEEK_HOLE);
		if (hole < 0 || hole > end) hole = end;
		off_t from = data / cb * cb, to = (hole + cb - 1) / cb * cb;
		if (to > end) to = end;
		if (n > 0 && (off_t)((l->blocks[n - 1].offset + l->blocks[n - 1].length) * VIXDISKLIB_SECTOR_SIZE) >= from) {
			l->blocks[n - 1].length = to / VIXDISKLIB_SECTOR_SIZE - l->blocks[n - 1].offset;
		} else {
			if (n == cap) {
				cap *= 2;
				l = realloc(l, sizeof *l + cap * sizeof(VixDiskLibBlock));
			}
			l->blocks[n].offset = from / VIXDISKLIB_SECTOR_SIZE;
			l->blocks[n].length = (to - from) / VIXDISKLIB_SECTOR_SIZE;
			n++;
		}
		pos = to;
	}
	l->numBlocks = n;
	*out = l;
	leave(&d->busy);
	return VIX_OK;
}

VixError VixDiskLib_FreeBlockList(VixDiskLibBlockList *l) {
	free(l);
	return VIX_OK;
}

char *VixDiskLib_GetErrorText(VixError err, const char *locale) {
	const char *t;
	switch (err & 0xffff) {
	case VIX_E_FAIL: t = "Unknown error"; break;
	case VIX_E_INVALID_ARG: t = "One of the parameters was invalid"; break;
	case VIX_E_FILE_NOT_FOUND: t = "The file was not found"; break;
	case VIX_E_OBJECT_IS_BUSY: t = "The object is busy"; break;
	case VIX_E_NOT_SUPPORTED: t = "The operation is not supported"; break;
	case VIX_E_FILE_READ_ONLY: t = "The file is write-protected"; break;
	default: t = "Unknown error code";
	}
	return strdup(t);
}

void VixDiskLib_FreeErrorText(char *t) { free(t); }
