package scanner

// The in-kernel sweep (bpf/sweep.c) is compiled to BPF and committed with
// its Go bindings, so that `go build` needs no clang. `make bpf-check`
// regenerates it and fails if it differs. The flags are pinned: -mcpu=v3
// (Linux >= 5.1 runs it), and bpf2go's own -fno-ident and debug prefix
// map keep the object free of the clang version and of the checkout's path.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -mcpu=v3 -Wall -Werror -I/usr/include" -target bpfel -go-package scanner sweep bpf/sweep.c
