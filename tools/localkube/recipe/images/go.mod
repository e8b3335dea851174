module localkube.invalid/images

go 1.24.0
