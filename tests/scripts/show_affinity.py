"""Prints this thread's CPUs and the CPU sets of all the process's threads."""
import os

print("app", sorted(os.sched_getaffinity(0)))
sets = sorted({tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")})
print("threads", sets)
