;; Imports a function no WASI host provides: create must fail and name it.
(module
  (import "env" "mystery" (func $mystery))
  (func (export "_start") (call $mystery)))
