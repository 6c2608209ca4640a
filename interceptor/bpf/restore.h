/* Shared by recvmsg4/6 and getpeername4/6: where the app sees the sidecar's own address (the
 * source of a DNS reply, the peer of a redirected connection), it is shown the original
 * destination again, so the redirect stays invisible. */
#ifndef DETOUR_RESTORE_H
#define DETOUR_RESTORE_H

#include "maps.h"

/* If ``addr`` (16-byte form) with the context's port is one of the sidecar's capture addresses
 * (loopback, the outbound or the DNS port) and this socket was redirected, the original
 * destination; else 0.
 * Reads: settings, origin_store[socket]. */
static __always_inline struct origin *restored_origin(struct bpf_sock_addr *ctx, const __u32 *addr)
{
    struct settings *s = current_settings();
    if (!s || !is_loopback(addr))
        return 0;
    __u16 port = dt_ntohs((__u16)ctx->user_port);
    if (port != s->proxy_port && port != s->dns_port)
        return 0;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 0;
    struct origin *orig = origin_store.sk_storage_get(sk, 0, 0);
    if (!orig || !orig->valid)
        return 0;
    return orig;
}

/* Rewrite the context's IPv4 address to ``orig`` (an IPv4 original only). */
static __always_inline int restore4(struct bpf_sock_addr *ctx, struct origin *orig)
{
    if (!is_v4_mapped(orig->ip))
        return 0;
    ctx->user_ip4 = orig->ip[3];
    ctx->user_port = orig->port;
    return 1;
}

/* Rewrite the context's IPv6 address to ``orig`` (16-byte form, v4-mapped as stored). */
static __always_inline int restore6(struct bpf_sock_addr *ctx, struct origin *orig)
{
    ctx->user_ip6[0] = orig->ip[0];
    ctx->user_ip6[1] = orig->ip[1];
    ctx->user_ip6[2] = orig->ip[2];
    ctx->user_ip6[3] = orig->ip[3];
    ctx->user_port = orig->port;
    return 1;
}

#endif
