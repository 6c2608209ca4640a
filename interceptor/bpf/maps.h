/* Shared by the three Detour interception programs; the loader compiles them as one bcc module
 * so they share these maps. PROXY_UID and PROXY_PORT come from the loader as -D flags. */
#ifndef DETOUR_MAPS_H
#define DETOUR_MAPS_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/socket.h>

#ifndef PROXY_UID
#define PROXY_UID 1337
#endif
#ifndef PROXY_PORT
#define PROXY_PORT 15001
#endif
#define LOOPBACK_HOST_ORDER 0x7f000001u
#define SO_ORIGINAL_DST 80
#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif

/* x86-64 and arm64 are little-endian; the loader refuses big-endian hosts. */
#define dt_htonl(x) __builtin_bswap32(x)
#define dt_htons(x) ((__u16)__builtin_bswap16(x))
#define dt_ntohl(x) __builtin_bswap32(x)
#define dt_ntohs(x) ((__u16)__builtin_bswap16(x))

/* Where a redirected connection was going: network byte order, as in a sockaddr_in. */
struct origin {
    __u32 ip4;
    __u16 port;
    __u16 pad;
};

/* The client end of a redirected connection: its local IPv4 (network order) and local port
 * (host order). The proxy's accepted socket sees exactly this as its peer. */
struct client_end {
    __u32 ip4;
    __u32 port;
};

/* connect4 writes, sockops reads and deletes: socket cookie -> original destination. */
BPF_TABLE("lru_hash", __u64, struct origin, origin_by_cookie, 65536);
/* sockops writes, getsockopt reads: client (ip, port) -> original destination. */
BPF_TABLE("lru_hash", struct client_end, struct origin, origin_by_client, 65536);

#endif
