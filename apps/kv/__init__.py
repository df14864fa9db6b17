"""The KV store's parts (app code, no side of the trust boundary: apps/kvstore.py runs them).

items   memcached's item memory in one mmap arena: hash table, slab classes, LRU, item flags
tokens  numbers and keys as memcached's text protocol reads them
meta    the meta protocol (mg, ms, md, ma, mn, me)
admin   stats and its subcommands, cache_memlimit, lru_crawler, verbosity
udp     memcached's UDP frames (-U)
binary  memcached's binary protocol
"""
