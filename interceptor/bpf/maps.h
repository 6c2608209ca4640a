/* Shared by every Detour interception program: the loader compiles them as one bcc module, so
 * they share these maps. Every address is kept in one 16-byte form: IPv6 as it is, IPv4 as the
 * v4-mapped ::ffff:a.b.c.d, so one key type, one CIDR trie and one record serve both families.
 * The configuration (ports, proxy ids, exclusions, switches) lives in maps the loader fills, so
 * attaching again only rewrites those maps. */
#ifndef DETOUR_MAPS_H
#define DETOUR_MAPS_H

/* No kernel headers: bcc already includes its uapi bpf.h (struct bpf_sock_addr, BPF_TCP_CLOSE,
 * ...), and with the kernel's build tree on the include path <linux/bpf.h>, <linux/in.h> or
 * <linux/tcp.h> are the big internal headers: including them made every attach compile for
 * 8 s instead of 1. The few constants needed are the stable ABI values. */
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef SOL_IP
#define SOL_IP 0
#endif
#ifndef SOL_IPV6
#define SOL_IPV6 41
#endif
#define SO_ORIGINAL_DST 80      /* linux/netfilter_ipv4.h */
#define IP6T_SO_ORIGINAL_DST 80 /* linux/netfilter_ipv6/ip6_tables.h */
#define DNS_PORT 53
#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif
#ifndef SOCK_DGRAM
#define SOCK_DGRAM 2
#endif

/* x86-64 and arm64 are little-endian; the loader refuses big-endian hosts. */
#define dt_htonl(x) __builtin_bswap32(x)
#define dt_htons(x) ((__u16)__builtin_bswap16(x))
#define dt_ntohl(x) __builtin_bswap32(x)
#define dt_ntohs(x) ((__u16)__builtin_bswap16(x))
#define V4_MAPPED_PREFIX 0xffff0000u /* ip[2] of ::ffff:a.b.c.d, as stored (network order) */

/* A load from the program's context that the compiler may neither merge nor move into a branch:
 * the verifier only accepts context reads at a constant offset from the context pointer. */
#define CTX_READ(field) (*(volatile __u32 *)&(field))

/* settings[0].flags */
#define SETTING_CONFIGURED 1   /* the loader has written the settings: act (else pass all) */
#define SETTING_CAPTURE_DNS 2  /* UDP and TCP port 53 go to the DNS proxy */
#define SETTING_SOCKMAP 4      /* local hops are short-circuited through local_socks */
#define SETTING_ALL_PORTS 8    /* capture every destination port (else only capture_ports) */
#define SETTING_ALL_CIDRS 16   /* capture every destination (else only capture_cidrs) */
#define SETTING_IPV6 32        /* connect6/sendmsg6 act (else IPv6 passes untouched) */

struct settings {
    __u32 flags;
    __u16 proxy_port; /* the sidecar's outbound listener, host order */
    __u16 dns_port;   /* the sidecar's DNS proxy, host order */
};

/* counters[] indexes; the loader reads them for `status` (names in interceptor/maps.py). */
#define COUNT_CONNECT_REDIRECTED 0 /* connects rewritten to the proxy */
#define COUNT_ORIGINAL_DST 1       /* SO_ORIGINAL_DST answered */
#define COUNT_RECORD_REJECTED 2    /* a record found for an accepted socket did not match it */
#define COUNT_DNS_REDIRECTED 3     /* UDP DNS datagrams (or TCP connects) sent to the DNS proxy */
#define COUNT_DNS_REPLIES 4        /* DNS replies whose source was rewritten back */
#define COUNT_SOCKMAP_INSERTED 5   /* sockets put in local_socks */
#define COUNT_SOCKMAP_REDIRECTED 6 /* messages redirected socket to socket */
#define COUNT_SOCKMAP_BYTES 7      /* bytes in those messages */
#define COUNTERS 8

/* An address and port: ip in the 16-byte form above (network order), port host order. */
struct endpoint {
    __u32 ip[4];
    __u32 port;
};

/* Where a connection was going before the connect hook rewrote it. */
struct origin {
    __u32 ip[4];  /* 16-byte form, network order */
    __u16 port;   /* network order, as in a sockaddr */
    __u16 valid;  /* 0: no record (storage exists but this socket was not redirected) */
};

/* What the client side knows when its handshake completes: the destination and the two
 * sequence numbers that identify this very connection. The proxy's accepted socket sees the
 * same numbers mirrored (its rcv_nxt is the client's snd_nxt and vice versa), so a record that
 * outlived its connection can never be taken for a new one (2^-64 odds). */
struct handoff {
    struct origin origin;
    __u32 client_snd_nxt;
    __u32 client_rcv_nxt;
};

/* A local TCP connection as seen from one end, for the sockhash. Ports host order. */
struct sock_key {
    __u32 local_ip[4];
    __u32 remote_ip[4];
    __u32 local_port;
    __u32 remote_port;
};

/* A CIDR in the 16-byte form: prefixlen counts from the first of the 128 bits. */
struct cidr_key {
    __u32 prefixlen;
    __u32 ip[4];
};

/* An identity that is never captured: kind 0 = uid, 1 = gid. */
struct owner_key {
    __u32 kind;
    __u32 id;
};

/* The loader writes settings[0]; programs only read it. */
BPF_ARRAY(settings, struct settings, 1);
/* Proxy uids and gids (loop prevention): the loader writes, connect/sendmsg read. */
BPF_HASH(proxy_owners, struct owner_key, __u8, 64);
/* Destination ports never captured / the only ones captured (unless SETTING_ALL_PORTS). */
BPF_HASH(exclude_ports, __u32, __u8, 1024);
BPF_HASH(capture_ports, __u32, __u8, 1024);
/* Destination CIDRs never captured / the only ones captured (unless SETTING_ALL_CIDRS). */
BPF_LPM_TRIE(exclude_cidrs, struct cidr_key, __u8, 1024);
BPF_LPM_TRIE(capture_cidrs, struct cidr_key, __u8, 1024);

/* Per socket, freed with it: the original destination of a redirected TCP connection (on the
 * app's socket: written by connect4/6; on the proxy's accepted socket: written by sockops and
 * read by getsockopt) and the original DNS server of a captured UDP socket (sendmsg/recvmsg). */
BPF_SK_STORAGE(origin_store, struct origin);
/* Client end of a just-established redirected connection -> its handoff. sockops writes it on
 * the app's side, takes (reads and deletes) it on the proxy's side, and deletes it when the
 * app's socket closes. LRU so that nothing can pile up even if a delete is missed. */
BPF_TABLE("lru_hash", struct endpoint, struct handoff, handoff_by_client, 16384);
/* Both ends of local (loopback) connections, for the sk_msg short-circuit. The kernel removes
 * a socket from it when the socket closes. */
BPF_SOCKHASH(local_socks, struct sock_key, 65536);
/* Event counters (see COUNT_*), for `detour-ebpf status` and the tests. */
BPF_ARRAY(counters, __u64, COUNTERS);

static __always_inline void count(__u32 index, __u64 amount)
{
    __u64 *value = counters.lookup(&index);
    if (value)
        __sync_fetch_and_add(value, amount);
}

static __always_inline struct settings *current_settings(void)
{
    __u32 zero = 0;
    struct settings *s = settings.lookup(&zero);
    if (!s || !(s->flags & SETTING_CONFIGURED))
        return 0;
    return s;
}

static __always_inline void map_v4(__u32 *ip, __u32 ip4)
{
    ip[0] = 0;
    ip[1] = 0;
    ip[2] = V4_MAPPED_PREFIX;
    ip[3] = ip4;
}

static __always_inline int is_v4_mapped(const __u32 *ip)
{
    return ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_PREFIX;
}

/* 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104, in the 16-byte form. */
static __always_inline int is_loopback(const __u32 *ip)
{
    if (is_v4_mapped(ip))
        return (dt_ntohl(ip[3]) >> 24) == 127;
    return ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == dt_htonl(1);
}

/* The address of a sock_addr context (connect6, sendmsg6, recvmsg6, getpeername6), 16 bytes. */
static __always_inline void read_ip6(struct bpf_sock_addr *ctx, __u32 *dst)
{
    dst[0] = ctx->user_ip6[0];
    dst[1] = ctx->user_ip6[1];
    dst[2] = ctx->user_ip6[2];
    dst[3] = ctx->user_ip6[3];
}

/* Is the calling task the proxy (by uid or gid)? Its connections are never captured. */
static __always_inline int caller_is_proxy(void)
{
    __u64 uid_gid = bpf_get_current_uid_gid();
    struct owner_key key = {};
    key.kind = 0;
    key.id = (__u32)uid_gid;
    if (proxy_owners.lookup(&key))
        return 1;
    key.kind = 1;
    key.id = (__u32)(uid_gid >> 32);
    return proxy_owners.lookup(&key) != 0;
}

/* Does the operator's selection capture this destination (port host order)? */
static __always_inline int destination_selected(struct settings *s, const __u32 *ip, __u32 port)
{
    if (exclude_ports.lookup(&port))
        return 0;
    if (!(s->flags & SETTING_ALL_PORTS) && !capture_ports.lookup(&port))
        return 0;
    struct cidr_key key = {};
    key.prefixlen = 128;
    key.ip[0] = ip[0];
    key.ip[1] = ip[1];
    key.ip[2] = ip[2];
    key.ip[3] = ip[3];
    if (exclude_cidrs.lookup(&key))
        return 0;
    if (!(s->flags & SETTING_ALL_CIDRS) && !capture_cidrs.lookup(&key))
        return 0;
    return 1;
}

#endif
