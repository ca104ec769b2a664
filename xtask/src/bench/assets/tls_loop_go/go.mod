module tlsloop

go 1.19
