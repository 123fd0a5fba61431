// Package nbd is a Network Block Device server: the fixed newstyle
// handshake with STARTTLS, simple, structured and extended-header replies,
// block status over base:allocation and export-defined meta contexts, and
// writes for exports that take them. It knows nothing of what it serves: a
// Source lists and opens Exports.
package nbd

// Protocol numbers from the NBD protocol document (doc/proto.md).
const (
	magicNBD        = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt        = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply   = 0x3e889045565a9
	magicRequest    = 0x25609513
	magicSimple     = 0x67446698
	magicStruct     = 0x668e33ef
	magicExtRequest = 0x21e41c71
	magicExtReply   = 0x6e8a278c

	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1
)

// Options.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
	optExtendedHeaders = 11
)

// Option reply types.
const (
	repAck              = 1
	repServer           = 2
	repInfo             = 3
	repMetaContext      = 4
	repErrUnsup         = 1<<31 + 1
	repErrPolicy        = 1<<31 + 2
	repErrInvalid       = 1<<31 + 3
	repErrTLSReqd       = 1<<31 + 5
	repErrUnknown       = 1<<31 + 6
	repErrTooBig        = 1<<31 + 9
	repErrExtHeaderReqd = 1<<31 + 10
)

// Info types of INFO/GO.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Transmission flags.
const (
	tflagHasFlags        = 1 << 0
	tflagReadOnly        = 1 << 1
	tflagSendFlush       = 1 << 2
	tflagSendFUA         = 1 << 3
	tflagSendTrim        = 1 << 5
	tflagSendWriteZeroes = 1 << 6
	tflagSendDF          = 1 << 7
	tflagCanMultiConn    = 1 << 8
	tflagSendCache       = 1 << 10
	tflagSendFastZero    = 1 << 11
)

// Commands and command flags.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	cmdFlagFUA        = 1 << 0
	cmdFlagNoHole     = 1 << 1
	cmdFlagDF         = 1 << 2
	cmdFlagReqOne     = 1 << 3
	cmdFlagFastZero   = 1 << 4
	cmdFlagPayloadLen = 1 << 5
	cmdFlagsKnown     = 1<<6 - 1
)

// Structured reply types and flags.
const (
	replyFlagDone       = 1 << 0
	replyNone           = 0
	replyOffsetData     = 1
	replyOffsetHole     = 2
	replyBlockStatus    = 5
	replyBlockStatusExt = 6
	replyError          = 1<<15 + 1
)

// Errors sent to clients (Linux errno values, as the protocol fixes them).
const (
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
	errShutdown = 108
)

// The base:allocation meta context and its states.
const (
	contextBaseAllocation = "base:allocation"

	stateHole = 1 << 0
	stateZero = 1 << 1
)

// Limits that keep a misbehaving client from costing more than a bounded
// amount of memory or work.
const (
	maxStatusDescriptors = 1 << 20 // per block status chunk, as the spec advises
	maxMetaContexts      = 256     // selected per connection
)
