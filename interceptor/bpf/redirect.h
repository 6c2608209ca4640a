/* The decision shared by connect4/connect6 and sendmsg4/sendmsg6: should this socket's
 * destination be rewritten to the sidecar, and to which of its ports? */
#ifndef DETOUR_REDIRECT_H
#define DETOUR_REDIRECT_H

#include "maps.h"

/* Remember (or forget, when redirect is 0) where this socket was going, in its own storage. */
static __always_inline void remember_origin(struct bpf_sock_addr *ctx, const __u32 *dst,
                                            int redirect)
{
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return;
    struct origin *stored =
        origin_store.sk_storage_get(sk, 0, redirect ? BPF_SK_STORAGE_GET_F_CREATE : 0);
    if (!stored)
        return;
    if (!redirect) {
        stored->valid = 0; /* a reconnect to somewhere not captured: drop the old record */
        return;
    }
    stored->ip[0] = dst[0];
    stored->ip[1] = dst[1];
    stored->ip[2] = dst[2];
    stored->ip[3] = dst[3];
    stored->port = (__u16)ctx->user_port;
    stored->valid = 1;
}

/* The sidecar port (host order) this destination goes to, or 0 to leave it alone.
 * Reads: settings, the caller's uid/gid, the socket type, the exclusion maps.
 * Writes: origin_store for the socket, the counters. */
static __always_inline __u16 redirect_port(struct bpf_sock_addr *ctx, const __u32 *dst)
{
    struct settings *s = current_settings();
    if (!s)
        return 0;
    __u32 port = dt_ntohs((__u16)ctx->user_port);
    int dns = port == DNS_PORT && (s->flags & SETTING_CAPTURE_DNS);
    __u16 target = 0;
    if (caller_is_proxy()) /* loop prevention: the proxy's own traffic is never captured */
        target = 0;
    else if (dns && (ctx->type == SOCK_DGRAM || ctx->type == SOCK_STREAM))
        target = s->dns_port; /* any server, a local one (127.0.0.53) too, as init does */
    else if (is_loopback(dst) || ctx->type != SOCK_STREAM)
        target = 0; /* local traffic stays local; UDP other than DNS is not captured */
    else if (destination_selected(s, dst, port))
        target = s->proxy_port;
    /* A UDP DNS socket needs its server for recvmsg; a TCP connection for getsockopt. */
    remember_origin(ctx, dst, target != 0);
    if (target)
        count(dns ? COUNT_DNS_REDIRECTED : COUNT_CONNECT_REDIRECTED, 1);
    return target;
}

/* Point an IPv4 destination at 127.0.0.1:port. */
static __always_inline void rewrite4(struct bpf_sock_addr *ctx, __u16 port)
{
    ctx->user_ip4 = dt_htonl(0x7f000001);
    ctx->user_port = dt_htons(port);
}

/* Point an IPv6 destination at [::1]:port, or a v4-mapped one at [::ffff:127.0.0.1]:port (a
 * dual-stack socket talking IPv4 must stay IPv4: it reaches the sidecar's IPv4 listener). */
static __always_inline void rewrite6(struct bpf_sock_addr *ctx, const __u32 *dst, __u16 port)
{
    if (is_v4_mapped(dst)) {
        ctx->user_ip6[0] = 0;
        ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = V4_MAPPED_PREFIX;
        ctx->user_ip6[3] = dt_htonl(0x7f000001);
    } else {
        ctx->user_ip6[0] = 0;
        ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = 0;
        ctx->user_ip6[3] = dt_htonl(1);
    }
    ctx->user_port = dt_htons(port);
}

/* The whole of connect4 and sendmsg4 (TCP connects and unconnected UDP sends decide alike):
 * redirect when the decision says so. */
static __always_inline void redirect_sock_addr4(struct bpf_sock_addr *ctx)
{
    __u32 dst[4];
    map_v4(dst, ctx->user_ip4);
    __u16 port = redirect_port(ctx, dst);
    if (port)
        rewrite4(ctx, port);
}

/* The whole of connect6 and sendmsg6; with IPv6 capture off only v4-mapped destinations (IPv4
 * over a dual-stack socket) are considered. */
static __always_inline void redirect_sock_addr6(struct bpf_sock_addr *ctx)
{
    __u32 dst[4];
    read_ip6(ctx, dst);
    struct settings *s = current_settings();
    if (!s || (!(s->flags & SETTING_IPV6) && !is_v4_mapped(dst)))
        return;
    __u16 port = redirect_port(ctx, dst);
    if (port)
        rewrite6(ctx, dst, port);
}

#endif
