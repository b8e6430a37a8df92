"""The routing table: the routing file watched and swapped in, and a variant chosen."""
