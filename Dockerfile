# The operator image: a static binary on a distroless base that runs as a non-root user.
# No UID is pinned here, so OpenShift can assign one from the namespace's range.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY controllers/ controllers/
COPY internal/ internal/
COPY main.go ./
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "-s -w" -o /capstan .

FROM gcr.io/distroless/static:nonroot
COPY --from=build /capstan /capstan
USER nonroot:nonroot
ENTRYPOINT ["/capstan"]
