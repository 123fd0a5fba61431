/*
 * The part of VMware's VixDiskLib (VDDK 6.7 and later) API that the
 * binding calls, declared here from the documented ABI so that the
 * binding builds without VDDK installed: the library is loaded at run
 * time. Both the binding and the test library (testdata/fakevddk.c)
 * include this file.
 */
#ifndef ASTROLABE_VIXDISKLIB_H
#define ASTROLABE_VIXDISKLIB_H

#include <stdarg.h>
#include <stdint.h>

typedef uint64_t VixError;
typedef uint64_t VixDiskLibSectorType;
typedef void *VixDiskLibConnection;
typedef void *VixDiskLibHandle;

enum {
	VIX_OK = 0,
	VIX_E_FAIL = 1,
	VIX_E_INVALID_ARG = 3,
	VIX_E_FILE_NOT_FOUND = 4,
	VIX_E_OBJECT_IS_BUSY = 5,
	VIX_E_NOT_SUPPORTED = 6,
	VIX_E_FILE_READ_ONLY = 11,
	VIX_ASYNC = 25000,
};

#define VIXDISKLIB_SECTOR_SIZE 512
#define VIXDISKLIB_FLAG_OPEN_READ_ONLY 4
#define VIXDISKLIB_MIN_CHUNK_SIZE 128
#define VIXDISKLIB_MAX_CHUNK_NUMBER (512 * 1024)

enum VixDiskLibCredType {
	VIXDISKLIB_CRED_UID = 1,
	VIXDISKLIB_CRED_SESSIONID = 2,
	VIXDISKLIB_CRED_TICKETID = 3,
	VIXDISKLIB_CRED_SSPI = 4,
	VIXDISKLIB_CRED_UNKNOWN = 256,
};

/*
 * VDDK's own headers number the object spec 1; its "datastore" spec (128)
 * is internal and not declared here.
 */
enum VixDiskLibSpecType {
	VIXDISKLIB_SPEC_VMX = 0,
	VIXDISKLIB_SPEC_VSTORAGE_OBJECT = 1,
	VIXDISKLIB_SPEC_UNKNOWN = 2,
};

/* A First Class Disk, or one of its snapshots (ssId). */
typedef struct {
	char *id;
	char *datastoreMoRef;
	char *ssId;
} VixDiskLibVStorageObjectSpec;

typedef struct {
	char *vmxSpec; /* "moref=vm-42" for a VM's disks */
	char *serverName;
	char *thumbPrint;
	long privateUse;
	enum VixDiskLibCredType credType;
	union {
		struct {
			char *userName;
			char *password;
		} uid;
		struct {
			char *cookie;
			char *userName;
			char *key;
		} sessionId;
		void *ticketId;
	} creds;
	uint32_t port;
	uint32_t nfcHostPort;
	char *vimApiVer;
	char reserved[8];
	void *privateData;
	union {
		VixDiskLibVStorageObjectSpec vStorageObjSpec;
	} spec;
	enum VixDiskLibSpecType specType;
} VixDiskLibConnectParams;

#if defined(__LP64__) && !defined(__cplusplus)
#include <stddef.h>
/* The offsets VDDK's own header gives on 64-bit Linux. */
_Static_assert(offsetof(VixDiskLibConnectParams, creds) == 40, "VixDiskLibConnectParams ABI");
_Static_assert(offsetof(VixDiskLibConnectParams, port) == 64, "VixDiskLibConnectParams ABI");
_Static_assert(offsetof(VixDiskLibConnectParams, spec) == 96, "VixDiskLibConnectParams ABI");
_Static_assert(offsetof(VixDiskLibConnectParams, specType) == 120, "VixDiskLibConnectParams ABI");
_Static_assert(sizeof(VixDiskLibConnectParams) == 128, "VixDiskLibConnectParams ABI");
#endif

typedef struct {
	uint32_t cylinders;
	uint32_t heads;
	uint32_t sectors;
} VixDiskLibGeometry;

/* Allocated by the library, which adds fields at the end (7.0 adds
 * sector sizes): only read through a pointer it returned. */
typedef struct {
	VixDiskLibGeometry biosGeo;
	VixDiskLibGeometry physGeo;
	VixDiskLibSectorType capacity; /* in sectors */
	int adapterType;
	int numLinks;
	char *parentFileNameHint;
	char *uuid;
} VixDiskLibInfo;

typedef struct {
	VixDiskLibSectorType offset; /* in sectors */
	VixDiskLibSectorType length;
} VixDiskLibBlock;

typedef struct {
	uint32_t numBlocks;
	VixDiskLibBlock blocks[1];
} VixDiskLibBlockList;

typedef void VixDiskLibGenericLogFunc(const char *fmt, va_list args);
typedef void (*VixDiskLibCompletionCB)(void *cbData, VixError result);

VixError VixDiskLib_InitEx(uint32_t majorVersion, uint32_t minorVersion,
                           VixDiskLibGenericLogFunc *log, VixDiskLibGenericLogFunc *warn,
                           VixDiskLibGenericLogFunc *panic, const char *libDir,
                           const char *configFile);
void VixDiskLib_Exit(void);
VixError VixDiskLib_ConnectEx(const VixDiskLibConnectParams *params, char readOnly,
                              const char *snapshotRef, const char *transportModes,
                              VixDiskLibConnection *connection);
VixError VixDiskLib_Disconnect(VixDiskLibConnection connection);
VixError VixDiskLib_Open(const VixDiskLibConnection connection, const char *path,
                         uint32_t flags, VixDiskLibHandle *handle);
VixError VixDiskLib_Close(VixDiskLibHandle handle);
VixError VixDiskLib_GetInfo(VixDiskLibHandle handle, VixDiskLibInfo **info);
void VixDiskLib_FreeInfo(VixDiskLibInfo *info);
const char *VixDiskLib_GetTransportMode(VixDiskLibHandle handle);
VixError VixDiskLib_Read(VixDiskLibHandle handle, VixDiskLibSectorType startSector,
                         VixDiskLibSectorType numSectors, uint8_t *buf);
VixError VixDiskLib_Write(VixDiskLibHandle handle, VixDiskLibSectorType startSector,
                          VixDiskLibSectorType numSectors, const uint8_t *buf);
VixError VixDiskLib_ReadAsync(VixDiskLibHandle handle, VixDiskLibSectorType startSector,
                              VixDiskLibSectorType numSectors, uint8_t *buf,
                              VixDiskLibCompletionCB callback, void *cbData);
VixError VixDiskLib_WriteAsync(VixDiskLibHandle handle, VixDiskLibSectorType startSector,
                               VixDiskLibSectorType numSectors, const uint8_t *buf,
                               VixDiskLibCompletionCB callback, void *cbData);
VixError VixDiskLib_Wait(VixDiskLibHandle handle);
VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle handle,
                                         VixDiskLibSectorType startSector,
                                         VixDiskLibSectorType numSectors,
                                         VixDiskLibSectorType chunkSize,
                                         VixDiskLibBlockList **blockList);
VixError VixDiskLib_FreeBlockList(VixDiskLibBlockList *blockList);
char *VixDiskLib_GetErrorText(VixError err, const char *locale);
void VixDiskLib_FreeErrorText(char *text);

#endif
