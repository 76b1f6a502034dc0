;; Traps at once: the shim reports exit status 134 and the trap on stderr.
(module
  (func $crash (unreachable))
  (func (export "_start") (call $crash)))
