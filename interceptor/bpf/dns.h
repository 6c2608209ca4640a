/* Shared by recvmsg4/recvmsg6: the DNS proxy's reply is made to look like the server's. */
#ifndef DETOUR_DNS_H
#define DETOUR_DNS_H

#include "maps.h"

/* If ``src`` (16-byte form) and the message's source port are the DNS proxy's own address and
 * this socket's queries were captured, return the server the app asked (else 0).
 * Reads: settings, origin_store[socket]. */
static __always_inline struct origin *captured_server(struct bpf_sock_addr *ctx, const __u32 *src)
{
    struct settings *s = current_settings();
    if (!s || !(s->flags & SETTING_CAPTURE_DNS))
        return 0;
    if (dt_ntohs((__u16)ctx->user_port) != s->dns_port || !is_loopback(src))
        return 0;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 0;
    struct origin *orig = origin_store.sk_storage_get(sk, 0, 0);
    if (!orig || !orig->valid)
        return 0;
    count(COUNT_DNS_REPLIES, 1);
    return orig;
}

#endif
