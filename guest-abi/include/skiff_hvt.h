/*
 * skiff_hvt.h: the Solo5 hvt guest ABI (version 2, x86_64) as skiff serves
 * it, for C guests. The same numbers and layouts as the guest-abi crate; the
 * _Static_asserts pin every size and offset to Solo5's.
 *
 * A hypercall is a 32-bit OUT of the argument struct's guest-physical
 * address (== its virtual address: guest memory is identity-mapped and at
 * most 4 GiB) to port SKIFF_HVT_PIO_BASE + nr. IN fields are written by the
 * guest, OUT fields by the tender.
 *
 * Define SKIFF_HVT_NO_INLINE_ASM to get only the types and constants.
 */
#ifndef SKIFF_HVT_H
#define SKIFF_HVT_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__x86_64__)
#error "the hvt ABI is defined for x86_64 only"
#endif

/* Versions and layout. */
#define SKIFF_HVT_ABI_VERSION 2
#define SKIFF_HVT_PIO_BASE 0x500
#define SKIFF_HVT_HYPERCALL_MAX 32
#define SKIFF_HVT_RING_IO_KICK_PORT 0x600
#define SKIFF_HVT_BOOT_INFO_BASE 0x10000ULL
#define SKIFF_HVT_KERNEL_BASE 0x100000ULL
#define SKIFF_HVT_CMDLINE_SIZE 8192
#define SKIFF_HVT_HALT_COOKIE_MAX 512

/* Hypercall numbers: Solo5's, then skiff's extensions (only when
 * host_features has SKIFF_FEATURE_EXT). */
enum skiff_hvt_hypercall {
    SKIFF_HVT_HC_WALLTIME = 1,
    SKIFF_HVT_HC_PUTS = 2,
    SKIFF_HVT_HC_POLL = 3,
    SKIFF_HVT_HC_BLOCK_WRITE = 4,
    SKIFF_HVT_HC_BLOCK_READ = 5,
    SKIFF_HVT_HC_NET_WRITE = 6,
    SKIFF_HVT_HC_NET_READ = 7,
    SKIFF_HVT_HC_HALT = 8,
    SKIFF_HC_REQ_READ = 16,
    SKIFF_HC_RESP_WRITE = 17,
    SKIFF_HC_REQ_META = 18,
    SKIFF_HC_ACCEL_OP = 19,
    SKIFF_HC_RESP_HEAD = 20,
    SKIFF_HC_REQ_NEXT = 21,
};

/* Result codes in `ret` fields (solo5_result_t). */
#define SKIFF_HVT_R_OK 0
#define SKIFF_HVT_R_AGAIN 1
#define SKIFF_HVT_R_EINVAL 2
#define SKIFF_HVT_R_EUNSPEC 3

/* host_features bits. */
#define SKIFF_HVT_FEATURE_RING_IO (1U << 0)
#define SKIFF_FEATURE_EXT (1U << 16)
#define SKIFF_FEATURE_FUNCTION (1U << 17)
#define SKIFF_FEATURE_RESP_HEAD (1U << 19)
#define SKIFF_FEATURE_REQ_NEXT (1U << 20)
#define SKIFF_FEATURE_ACCEL (1U << 18)

/* Boot info at SKIFF_HVT_BOOT_INFO_BASE; rdi points at it on entry. */
struct skiff_hvt_boot_info {
    uint64_t mem_size;       /* guest memory size in bytes */
    uint64_t kernel_end;     /* end of the highest loaded segment */
    uint64_t cpu_cycle_freq; /* TSC frequency in Hz */
    uint64_t cmdline;        /* GPA of the NUL-terminated command line */
    uint64_t mft;            /* GPA of the tender's filled-in manifest */
    uint32_t host_features;
    uint32_t guest_features;
    uint64_t net_ring;       /* GPA of the network ring, or 0 */
};

struct skiff_hvt_walltime {
    uint64_t nsecs; /* OUT */
};

struct skiff_hvt_puts {
    uint64_t data; /* IN: GPA */
    uint64_t len;  /* IN */
};

struct skiff_hvt_poll {
    uint64_t timeout_nsecs; /* IN */
    uint64_t ready_set;     /* OUT: bit (1 << handle) per ready net device */
    int32_t ret;            /* OUT */
};

/* BLOCK_WRITE and BLOCK_READ. */
struct skiff_hvt_block {
    uint64_t handle; /* IN */
    uint64_t offset; /* IN: bytes, a multiple of the block size */
    uint64_t data;   /* IN: GPA */
    uint64_t len;    /* IN (and OUT for reads) */
    int32_t ret;     /* OUT */
};

/* NET_WRITE and NET_READ. */
struct skiff_hvt_net {
    uint64_t handle; /* IN */
    uint64_t data;   /* IN: GPA */
    uint64_t len;    /* IN: frame or buffer size; OUT for reads: frame size */
    int32_t ret;     /* OUT */
};

struct skiff_hvt_halt {
    uint64_t cookie;     /* IN: 0, or GPA of up to 512 bytes of register dump */
    int32_t exit_status; /* IN */
};

_Static_assert(sizeof(struct skiff_hvt_boot_info) == 56, "boot_info size");
_Static_assert(offsetof(struct skiff_hvt_boot_info, mft) == 32, "boot_info.mft");
_Static_assert(offsetof(struct skiff_hvt_boot_info, host_features) == 40, "host_features");
_Static_assert(offsetof(struct skiff_hvt_boot_info, guest_features) == 44, "guest_features");
_Static_assert(offsetof(struct skiff_hvt_boot_info, net_ring) == 48, "net_ring");
_Static_assert(sizeof(struct skiff_hvt_walltime) == 8, "walltime size");
_Static_assert(sizeof(struct skiff_hvt_puts) == 16, "puts size");
_Static_assert(sizeof(struct skiff_hvt_poll) == 24, "poll size");
_Static_assert(offsetof(struct skiff_hvt_poll, ret) == 16, "poll.ret");
_Static_assert(sizeof(struct skiff_hvt_block) == 40, "block size");
_Static_assert(offsetof(struct skiff_hvt_block, ret) == 32, "block.ret");
_Static_assert(sizeof(struct skiff_hvt_net) == 32, "net size");
_Static_assert(offsetof(struct skiff_hvt_net, ret) == 24, "net.ret");
_Static_assert(sizeof(struct skiff_hvt_halt) == 16, "halt size");
_Static_assert(offsetof(struct skiff_hvt_halt, exit_status) == 8, "halt.exit_status");

/* The application manifest (MFT1). */
#define SKIFF_MFT_VERSION 1
#define SKIFF_MFT_MAX_ENTRIES 64
#define SKIFF_MFT_NAME_SIZE 68 /* including the NUL */
#define SKIFF_MFT_NAME_MAX 67
#define SKIFF_MFT_DEV_BLOCK_BASIC 1
#define SKIFF_MFT_DEV_NET_BASIC 2
#define SKIFF_MFT_RESERVED_FIRST (1U << 30)

struct skiff_mft_entry {
    char name[SKIFF_MFT_NAME_SIZE];
    uint32_t type;
    union {
        struct {
            uint64_t capacity;
            uint16_t block_size;
        } block_basic;
        struct {
            uint8_t mac[6];
            uint16_t mtu;
        } net_basic;
    } u;
    uint64_t host_private; /* the tender's; 0 in the file */
    uint8_t attached;      /* false in the file; set by the tender */
};

struct skiff_mft {
    uint32_t version;
    uint32_t entries;
    struct skiff_mft_entry e[]; /* e[0] is SKIFF_MFT_RESERVED_FIRST, no name */
};

_Static_assert(sizeof(struct skiff_mft_entry) == 104, "mft_entry size");
_Static_assert(offsetof(struct skiff_mft_entry, type) == 68, "mft_entry.type");
_Static_assert(offsetof(struct skiff_mft_entry, u) == 72, "mft_entry.u");
_Static_assert(offsetof(struct skiff_mft_entry, host_private) == 88, "host_private");
_Static_assert(offsetof(struct skiff_mft_entry, attached) == 96, "attached");
_Static_assert(sizeof(struct skiff_mft) == 8, "mft header size");

/* ELF notes. Both are named "Solo5" and sit each in a PT_NOTE of its own
 * (sections .note.solo5.abi and .note.solo5.manifest). */
#define SKIFF_NOTE_NAME "Solo5"
#define SKIFF_NOTE_TYPE_ABI 0x31494241U /* "ABI1" */
#define SKIFF_NOTE_TYPE_MFT 0x3154464dU /* "MFT1" */
#define SKIFF_ABI_TARGET_HVT 1

struct skiff_note_header {
    uint32_t n_namesz; /* sizeof("Solo5") == 6 */
    uint32_t n_descsz;
    uint32_t n_type;
    char n_name[8];    /* "Solo5", NUL-padded to 4 */
};

struct skiff_abi1_note {
    struct skiff_note_header h;
    uint32_t abi_target;  /* SKIFF_ABI_TARGET_HVT */
    uint32_t abi_version; /* SKIFF_HVT_ABI_VERSION */
    uint32_t reserved0;   /* SKIFF_ABI_FLAG_FUNCTION or 0 */
    uint32_t reserved1;
};
/* The guest is a function: skiff sends its console to stderr. */
#define SKIFF_ABI_FLAG_FUNCTION (1U << 0)

/* The MFT1 note with N entries: the manifest starts 8-aligned, 4 bytes after
 * the header, and those 4 bytes count in n_descsz:
 * n_descsz = 4 + 8 + N * 104. Declare the note with alignment 4 (as Solo5
 * does) at an 8-aligned address, e.g. first in its output section. */
/* Function I/O (SKIFF_FEATURE_FUNCTION); see guest-abi/src/skiff.rs. */
#define SKIFF_R_NOT_FOUND 16
#define SKIFF_R_TOO_SMALL 17
#define SKIFF_REQ_META_NAME_MAX 256

struct skiff_req_read {
    uint64_t data;
    uint64_t len;   /* IN buffer size, OUT bytes read (0: end of body) */
    uint64_t limit; /* IN most body bytes accepted in all (0: none) */
    int32_t ret;
    uint32_t flags; /* IN SKIFF_REQ_READ_FILL or 0 */
};
#define SKIFF_REQ_READ_FILL (1U << 0)

struct skiff_resp_write {
    uint64_t data;
    uint64_t len;
    int32_t ret;
    uint32_t pad;
};

struct skiff_req_meta {
    uint64_t name; /* "Method", "Path", ...: the watchdog's Http_<name> */
    uint64_t name_len;
    uint64_t data;
    uint64_t len; /* IN buffer size, OUT value size */
    int32_t ret;
    uint32_t pad;
};

/* RESP_HEAD (SKIFF_FEATURE_RESP_HEAD): before the first RESP_WRITE. */
struct skiff_resp_head {
    uint64_t content_type; /* visible ASCII and spaces */
    uint64_t type_len;     /* 0: keep the default; at most 256 */
    uint32_t status;       /* 100..599 */
    int32_t ret;
};
_Static_assert(sizeof(struct skiff_resp_head) == 24, "resp_head size");

/* REQ_NEXT: end this response, wait for the next request (skiff serve
 * --warm only; elsewhere ret is EUNSPEC and the guest should halt). */
struct skiff_req_next {
    int32_t ret;
    uint32_t pad;
};

_Static_assert(sizeof(struct skiff_req_read) == 32, "req_read size");
_Static_assert(sizeof(struct skiff_resp_write) == 24, "resp_write size");
_Static_assert(sizeof(struct skiff_req_meta) == 40, "req_meta size");

/* Accelerator operations (SKIFF_FEATURE_ACCEL, SKIFF_HC_ACCEL_OP); the
 * commands, op and argument types are in guest-abi/src/accel.rs. */
struct skiff_accel {
    uint32_t cmd;
    uint32_t session;    /* OUT for SESSION_INIT */
    uint32_t flags;
    uint32_t resource;   /* OUT for RESOURCE_REGISTER */
    uint64_t read_args;  /* GPA of nr_read struct skiff_accel_arg */
    uint64_t write_args; /* GPA of nr_write struct skiff_accel_arg */
    uint32_t nr_read;
    uint32_t nr_write;
    int32_t ret;         /* OUT: 0 or an errno value */
    uint32_t plugin;     /* OUT: the plugin that ran a GENOP */
};

struct skiff_accel_arg {
    uint64_t gpa;
    uint64_t size;
    uint32_t type;
    uint32_t custom;
};

_Static_assert(sizeof(struct skiff_accel) == 48, "accel size");
_Static_assert(offsetof(struct skiff_accel, read_args) == 16, "accel.read_args");
_Static_assert(offsetof(struct skiff_accel, ret) == 40, "accel.ret");
_Static_assert(sizeof(struct skiff_accel_arg) == 24, "accel_arg size");
_Static_assert(offsetof(struct skiff_accel_arg, type) == 16, "accel_arg.type");

#define SKIFF_MFT1_NOTE_PAD 4
#define SKIFF_MFT1_NOTE_DESCSZ(n) \
    (SKIFF_MFT1_NOTE_PAD + sizeof(struct skiff_mft) + (n) * sizeof(struct skiff_mft_entry))

_Static_assert(sizeof(struct skiff_note_header) == 20, "note header size");
_Static_assert(sizeof(struct skiff_abi1_note) == 36, "abi1 note size");
_Static_assert(SKIFF_MFT1_NOTE_DESCSZ(1) == 116, "mft1 descsz");

#ifndef SKIFF_HVT_NO_INLINE_ASM
/* Issue hypercall `nr` with argument struct `arg` (which must be below
 * 4 GiB: always true in hvt guest memory). */
static inline void skiff_hvt_hypercall(enum skiff_hvt_hypercall nr, void *arg)
{
    __asm__ __volatile__("outl %0, %1"
                         :
                         : "a"((uint32_t)(uintptr_t)arg),
                           "d"((uint16_t)(SKIFF_HVT_PIO_BASE + nr))
                         : "memory");
}
#endif

#endif /* SKIFF_HVT_H */
