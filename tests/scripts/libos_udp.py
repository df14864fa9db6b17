"""UDP on 127.0.0.1: sendto/recvfrom/recvfrom_into/recv_into between two sockets."""
import socket

a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a.bind(("127.0.0.1", 0))
b.bind(("127.0.0.1", 0))
b.settimeout(5)
for i in range(3):
    a.sendto(b"datagram %d" % i, b.getsockname())
for i in range(2):
    data, addr = b.recvfrom(100)
    print("recvfrom", data, addr == a.getsockname())
buf = bytearray(20)
n, addr = b.recvfrom_into(buf)
print("recvfrom_into", n, bytes(buf[:n]), addr == a.getsockname())
b.connect(a.getsockname())
b.send(b"back")
a.settimeout(5)
buf = bytearray(10)
print("recv_into", a.recv_into(buf), bytes(buf[:4]))
a.setblocking(False)
try:
    a.recvfrom(10)
except BlockingIOError:
    print("empty queue would block")
print("type", a.type.name, a.family.name)
a.close()
b.close()
