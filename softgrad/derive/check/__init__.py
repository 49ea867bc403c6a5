"""derive → check: every step of every derivation checked by the machine — numerically, entry by entry
(`numeric`, with the spec language's numeric meaning in `numbers`), and proved exactly at small sizes (`proof`)."""
