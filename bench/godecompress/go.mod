module minimaldask/bench/godecompress

go 1.21

require github.com/klauspost/compress v1.15.11
