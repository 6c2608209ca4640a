"""Detour init: install transparent interception (iptables REDIRECT/TPROXY) in a namespace."""
