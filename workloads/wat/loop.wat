;; loop: a WASI preview1 command (exports memory and _start, imports nothing)
;; whose _start spins forever without ever calling the host and prints nothing.
;; It only ends when the host interrupts it (epoch deadline, fuel, kill).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $forever
      (br $forever))))
