#!/usr/bin/env python3
"""make_gpu_node_xml.py — writes gpu-node.xml, a small hand-made hwloc 2 XML
of a 2-socket GPU server, for tests/placement. Run: python3 make_gpu_node_xml.py > gpu-node.xml

Shape: 2 packages x 2 NUMA nodes (sub-NUMA clusters, as Group objects) x 4
cores x 2 PUs = 16 cores, 32 PUs. PUs are numbered the Intel way: core c
(logical) has PU OS indices c and c+16, so logical and OS numbering differ.
PCI devices (NVIDIA 3D controllers, class 0302):
  0000:1b:00.0 under NUMA L#0's group   0000:3b:00.0 under NUMA L#1's group
  0000:8b:00.0 under NUMA L#2's group   0000:bb:00.0 under NUMA L#3's group
  0000:5d:00.0 under Package L#1 (spans NUMA 2 and 3: locality unknown)
  0000:e1:00.0 under the Machine (no locality: unknown)
"""

N_PACK, N_NUMA_PER, N_CORE_PER, N_PU_PER = 2, 2, 4, 2
N_CORE = N_PACK * N_NUMA_PER * N_CORE_PER
gp = [0]


def nextgp():
    gp[0] += 1
    return gp[0]


def bm(bits):
    v = 0
    for b in bits:
        v |= 1 << b
    return "0x%08x" % v


def sets(cpus, nodes):
    c, n = bm(cpus), bm(nodes)
    return 'cpuset="%s" complete_cpuset="%s" nodeset="%s" complete_nodeset="%s"' % (c, c, n, n)


def pus_of_core(c):
    return [c + k * N_CORE for k in range(N_PU_PER)]


def gpu(ind, busid, bus_lo, bus_hi):
    return [
        ind + '<object type="Bridge" gp_index="%d" bridge_type="0-1" depth="0" bridge_pci="0000:[%02x-%02x]">'
        % (nextgp(), bus_lo, bus_hi),
        ind + '  <object type="PCIDev" gp_index="%d" pci_busid="%s" pci_type="0302 [10de:2330] [10de:16c1] a1" pci_link_speed="0.000000"/>'
        % (nextgp(), busid),
        ind + "</object>",
    ]


numa_gpu = {0: ("0000:1b:00.0", 0x1A), 1: ("0000:3b:00.0", 0x3A),
            2: ("0000:8b:00.0", 0x8A), 3: ("0000:bb:00.0", 0xBA)}

out = ['<?xml version="1.0" encoding="UTF-8"?>', '<!DOCTYPE topology SYSTEM "hwloc2.dtd">',
       '<topology version="2.0">']
all_pus = list(range(N_CORE * N_PU_PER))
all_nodes = list(range(N_PACK * N_NUMA_PER))
out.append('  <object type="Machine" os_index="0" %s allowed_cpuset="%s" allowed_nodeset="%s" gp_index="%d">'
           % (sets(all_pus, all_nodes), bm(all_pus), bm(all_nodes), nextgp()))
out.append('    <info name="Backend" value="Synthetic"/>')
out.append('    <info name="Comment" value="hand-made by tests/placement/data/make_gpu_node_xml.py"/>')
for p in range(N_PACK):
    cores_p = range(p * N_NUMA_PER * N_CORE_PER, (p + 1) * N_NUMA_PER * N_CORE_PER)
    nodes_p = range(p * N_NUMA_PER, (p + 1) * N_NUMA_PER)
    out.append('    <object type="Package" os_index="%d" %s gp_index="%d">'
               % (p, sets([u for c in cores_p for u in pus_of_core(c)], nodes_p), nextgp()))
    for n in nodes_p:
        cores_n = range(n * N_CORE_PER, (n + 1) * N_CORE_PER)
        pus_n = [u for c in cores_n for u in pus_of_core(c)]
        out.append('      <object type="Group" %s gp_index="%d" kind="1001" subkind="0">' % (sets(pus_n, [n]), nextgp()))
        out.append('        <object type="NUMANode" os_index="%d" %s gp_index="%d" local_memory="1073741824"/>'
                   % (n, sets(pus_n, [n]), nextgp()))
        for c in cores_n:
            out.append('        <object type="Core" os_index="%d" %s gp_index="%d">' % (c, sets(pus_of_core(c), [n]), nextgp()))
            for u in pus_of_core(c):
                out.append('          <object type="PU" os_index="%d" %s gp_index="%d"/>' % (u, sets([u], [n]), nextgp()))
            out.append("        </object>")
        busid, lo = numa_gpu[n]
        out += gpu("        ", busid, lo, lo + 1)
        out.append("      </object>")
    if p == 1:
        out += gpu("      ", "0000:5d:00.0", 0x5C, 0x5D)
    out.append("    </object>")
out += gpu("    ", "0000:e1:00.0", 0xE0, 0xE1)
out.append("  </object>")
out.append("</topology>")
print("\n".join(out))
