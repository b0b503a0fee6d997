package paths

import (
	"context"
	"fmt"
	"io"
	"os/exec"

	"github.com/flatnet/flatnet/probes/podexec"
)

// DockerExecutor runs probes in a container of the local docker engine (the
// test world's outside client, scripts/test-world.sh): pod.Name is the
// container; pod.Namespace only says where it lives ("docker").
type DockerExecutor struct{}

// Exec runs `docker exec -i <container> cmd...`.
func (DockerExecutor) Exec(ctx context.Context, pod podexec.Pod, cmd []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := exec.CommandContext(ctx, "docker", append([]string{"exec", "-i", pod.Name}, cmd...)...)
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, stderr
	if err := c.Run(); err != nil {
		return fmt.Errorf("docker exec in %s: %w", pod.Name, err)
	}
	return nil
}
