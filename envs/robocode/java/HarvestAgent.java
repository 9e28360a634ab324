// Harvest's Java agent: removes Robocode 1.9.3.9's round-start race without changing its source.
//
// In RobotPeer.startRound the battle thread starts the robot (IHostingRobotProxy.startRound)
// and only then enters synchronized(isSleeping) to wait until the robot goes to sleep. A robot
// that reaches its first sleep (and notifies) in between is never heard: the battle thread
// waits out the whole timeout, minutes in lockstep (debug) mode. The agent rewrites that one
// method (with BCEL, which Debian ships) so that the monitor is taken *before* the robot
// starts and released with the method's own synchronized block: the robot cannot take it to
// notify until wait() releases it, so its notify always comes after the wait began.
//
// It also gives the runner each turn's state *before* the robots are woken for that turn
// (`turnReady`, called from Battle.initializeRound and from Battle.runTurn just before
// wakeupRobots). Robocode's own TurnEndedEvent comes after every robot has chosen its next
// commands, too late for a robot that waits on an outside policy (HarvestBridge): the policy
// needs that turn's state to choose them. Nothing in a robot's own turn changes the state the
// snapshot shows, so the early snapshot equals the one the TurnEndedEvent would carry.
// The JVM runs with -XX:-BytecodeVerificationRemote: BCEL cannot rebuild the StackMapTable.
//
// A patch that does not apply leaves its class unpatched, and the race back. So the agent
// records the outcome of each patch (`failure`), HarvestRunner forces both classes to load
// before its ready line and reports every patch in it, and the host refuses an engine with a
// patch missing (envs/robocode/protocol.py, `patches`). `-Dharvest.agent.target.<Class>.<method>=<other>`
// points a patch at another method name (the tests use it to make a patch miss).

package harvest.robocode;

import java.io.ByteArrayInputStream;
import java.lang.instrument.ClassFileTransformer;
import java.lang.instrument.Instrumentation;
import java.security.ProtectionDomain;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

import org.apache.bcel.Const;
import org.apache.bcel.classfile.ClassParser;
import org.apache.bcel.classfile.JavaClass;
import org.apache.bcel.classfile.Method;
import org.apache.bcel.generic.ALOAD;
import org.apache.bcel.generic.ClassGen;
import org.apache.bcel.generic.ConstantPoolGen;
import org.apache.bcel.generic.INVOKEINTERFACE;
import org.apache.bcel.generic.INVOKESPECIAL;
import org.apache.bcel.generic.InstructionFactory;
import org.apache.bcel.generic.InstructionHandle;
import org.apache.bcel.generic.InstructionList;
import org.apache.bcel.generic.MONITORENTER;
import org.apache.bcel.generic.MONITOREXIT;
import org.apache.bcel.generic.MethodGen;
import org.apache.bcel.generic.ObjectType;
import org.apache.bcel.generic.Type;

public final class HarvestAgent {
    static final String PEER = "net/sf/robocode/battle/peer/RobotPeer";
    static final String BATTLE = "net/sf/robocode/battle/Battle";
    /** The classes the agent patches (JVM internal names). */
    public static final String[] TARGETS = {PEER, BATTLE};

    /** Receives the battle's robots and bullets when a round starts and before each turn's robots wake. */
    public interface TurnListener {
        void turnReady(Object battle, List<?> robots, List<?> bullets);
    }

    /** Set by the runner; the patched Battle calls `turnReady` on it. */
    public static volatile TurnListener turnListener;

    /** Whether the JVM started this agent (`-javaagent`): without it no class is patched. */
    static volatile boolean started;
    /** Per target class that went through the agent: "" when patched, else why not. */
    static final Map<String, String> outcomes = new ConcurrentHashMap<>();

    public static void turnReady(Object battle, List<?> robots, List<?> bullets) {
        TurnListener listener = turnListener;
        if (listener != null) listener.turnReady(battle, robots, bullets);
    }

    /** Why the patch of `target` (an internal name) is missing, or null when it applied. */
    public static String failure(String target) {
        if (!started) return "HarvestAgent is not loaded (the JVM needs -javaagent:harvest-agent.jar)";
        String outcome = outcomes.get(target);
        if (outcome == null) return "the class was loaded without passing through HarvestAgent";
        return outcome.isEmpty() ? null : outcome;
    }

    /** The methods the patch of `target` rewrites, as name(signature). */
    public static String[] methods(String target) {
        if (PEER.equals(target)) return new String[] {method("RobotPeer", "startRound") + "(JI)V"};
        return new String[] {method("Battle", "initializeRound") + "()V", method("Battle", "runTurn") + "()V"};
    }

    /** The name the patch looks for instead of `method`: `-Dharvest.agent.target.<owner>.<method>`, else itself. */
    static String method(String owner, String method) {
        return System.getProperty("harvest.agent.target." + owner + "." + method, method);
    }

    public static void premain(String args, Instrumentation instrumentation) {
        instrumentation.addTransformer(new ClassFileTransformer() {
            @Override
            public byte[] transform(ClassLoader loader, String name, Class<?> redefined, ProtectionDomain domain,
                                    byte[] bytes) {
                if (!PEER.equals(name) && !BATTLE.equals(name)) return null;
                try {
                    byte[] patched = PEER.equals(name) ? patch(bytes) : patchBattle(bytes);
                    outcomes.put(name, "");
                    return patched;
                } catch (Throwable error) {
                    outcomes.put(name, String.valueOf(error));
                    System.err.println("HarvestAgent: could not patch " + name + ": " + error);
                    error.printStackTrace();
                    return null;
                }
            }
        });
        started = true;
    }

    static ClassGen classOf(byte[] bytes, String fileName) throws Exception {
        JavaClass parsed = new ClassParser(new ByteArrayInputStream(bytes), fileName).parse();
        return new ClassGen(parsed);
    }

    static void replace(ClassGen owner, Method method, MethodGen generator) {
        generator.removeCodeAttributes();  // the old StackMapTable no longer fits
        generator.setMaxStack();
        generator.setMaxLocals();
        owner.replaceMethod(method, generator.getMethod());
    }

    /** Battle.initializeRound (after its super call) and Battle.runTurn (before wakeupRobots) call turnReady. */
    static byte[] patchBattle(byte[] bytes) throws Exception {
        ClassGen battle = classOf(bytes, "Battle.class");
        ConstantPoolGen pool = battle.getConstantPool();
        InstructionFactory factory = new InstructionFactory(battle, pool);
        ObjectType list = new ObjectType("java.util.List");
        String roundMethod = method("Battle", "initializeRound");
        String turnMethod = method("Battle", "runTurn");
        int sites = 0;
        for (Method method : battle.getMethods()) {
            boolean round = method.getName().equals(roundMethod) && method.getSignature().equals("()V");
            boolean turn = method.getName().equals(turnMethod) && method.getSignature().equals("()V");
            if (!round && !turn) continue;
            MethodGen generator = new MethodGen(method, battle.getClassName(), pool);
            InstructionList code = generator.getInstructionList();
            for (InstructionHandle handle : code.getInstructionHandles()) {
                if (!(handle.getInstruction() instanceof INVOKESPECIAL)) continue;
                String called = ((INVOKESPECIAL) handle.getInstruction()).getMethodName(pool);
                if (!(round && called.equals("initializeRound")) && !(turn && called.equals("wakeupRobots"))) continue;
                InstructionList call = new InstructionList();
                call.append(new ALOAD(0));
                call.append(new ALOAD(0));
                call.append(factory.createGetField(battle.getClassName(), "robots", list));
                call.append(new ALOAD(0));
                call.append(factory.createGetField(battle.getClassName(), "bullets", list));
                call.append(factory.createInvoke(HarvestAgent.class.getName(), "turnReady", Type.VOID,
                                                 new Type[] {Type.OBJECT, list, list}, Const.INVOKESTATIC));
                if (round) code.append(handle, call); else code.insert(handle, call);
                sites++;
                break;
            }
            replace(battle, method, generator);
        }
        if (sites != 2) {
            throw new IllegalStateException("Battle." + roundMethod + "()V and Battle." + turnMethod
                                            + "()V: expected 2 places for turnReady, found " + sites);
        }
        return battle.getJavaClass().getBytes();
    }

    static byte[] patch(byte[] bytes) throws Exception {
        ClassGen peer = classOf(bytes, "RobotPeer.class");
        ConstantPoolGen pool = peer.getConstantPool();
        InstructionFactory factory = new InstructionFactory(peer, pool);
        ObjectType sleepingType = new ObjectType("java.util.concurrent.atomic.AtomicBoolean");
        String startMethod = method("RobotPeer", "startRound");
        int sites = 0;
        int exits = 0;
        for (Method method : peer.getMethods()) {
            if (!method.getName().equals(startMethod) || !method.getSignature().equals("(JI)V")) continue;
            MethodGen generator = new MethodGen(method, peer.getClassName(), pool);
            InstructionList code = generator.getInstructionList();
            for (InstructionHandle handle : code.getInstructionHandles()) {
                if (handle.getInstruction() instanceof INVOKEINTERFACE
                        && ((INVOKEINTERFACE) handle.getInstruction()).getMethodName(pool).equals("startRound")) {
                    // synchronized (isSleeping) from before the robot starts ...
                    InstructionList enter = new InstructionList();
                    enter.append(new ALOAD(0));
                    enter.append(factory.createGetField(peer.getClassName(), "isSleeping", sleepingType));
                    enter.append(new MONITORENTER());
                    code.insert(handle, enter);
                    sites++;
                } else if (handle.getInstruction() instanceof MONITOREXIT) {
                    // ... released with the method's own synchronized block (wait() released both holds)
                    InstructionList exit = new InstructionList();
                    exit.append(new ALOAD(0));
                    exit.append(factory.createGetField(peer.getClassName(), "isSleeping", sleepingType));
                    exit.append(new MONITOREXIT());
                    code.append(handle, exit);
                    exits++;
                }
            }
            replace(peer, method, generator);
        }
        if (sites != 1 || exits == 0) {
            throw new IllegalStateException("RobotPeer." + startMethod + "(JI)V: expected 1 robot start and a "
                                            + "synchronized block, found " + sites + " and " + exits + " monitor exits");
        }
        return peer.getJavaClass().getBytes();
    }

}
