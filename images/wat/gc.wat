;; Uses the GC proposal (a struct type): runs only where the handler enables
;; WasmGc, and exits with the struct's field, 7.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (type $point (struct (field i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (call $exit (struct.get $point 0 (struct.new $point (i32.const 7))))))
