// Harvest's bridge robot: a tank driven turn by turn by a policy outside the JVM (RobocodeEnv).
//
// It connects to 127.0.0.1:<harvest.bridge.port> (a system property of the engine JVM, which
// runs with -DNOSECURITY=true so that a robot may open a socket) when its round starts. Then,
// every turn from turn 0 (before its first command), it writes one JSON line,
//   {"round":0,"turn":12,"x":..,"y":..,"heading":..,"energy":..,"scans":[{"name":..,"bearing":..,
//    "distance":..,"energy":..,"heading":..,"velocity":..}]}   (radians, as Robocode's *Radians)
// with the ScannedRobotEvents of that turn, and reads one line back: the action
//   target_speed turn_rate gun_turn_rate radar_turn_rate fire_power
// (pixels/turn and degrees/turn, the meaning envs/robocode/transitions.py recovers from an
// expert's turns), which takes effect in the next turn. "IDLE" or the end of the stream (the
// policy went away) stops it for the rest of the round, so it never holds up the battle.
//
// The gun turns with the body and the radar with the gun (Robocode's defaults), so the gun's
// change is the body's turn plus gun_turn_rate, and the radar's the gun's plus radar_turn_rate.

package harvest;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

import robocode.AdvancedRobot;
import robocode.ScannedRobotEvent;

public class HarvestBridge extends AdvancedRobot {
    /** Far enough to never arrive in a round; Double.POSITIVE_INFINITY makes getMaxVelocity NaN. */
    private static final double FAR = 1e5;

    private final List<ScannedRobotEvent> scans = new ArrayList<>();

    @Override
    public void run() {
        String port = System.getProperty("harvest.bridge.port");
        if (port == null) {
            out.println("HarvestBridge: the engine has no -Dharvest.bridge.port; idling");
            idle();
        }
        try (Socket socket = new Socket("127.0.0.1", Integer.parseInt(port))) {
            socket.setTcpNoDelay(true);
            BufferedReader in = new BufferedReader(
                new InputStreamReader(socket.getInputStream(), StandardCharsets.UTF_8));
            OutputStream toPolicy = socket.getOutputStream();
            while (true) {
                toPolicy.write(report().getBytes(StandardCharsets.UTF_8));
                toPolicy.flush();
                String action = in.readLine();
                if (action == null || action.equals("IDLE")) break;
                apply(action);
                execute();
            }
        } catch (IOException error) {
            out.println("HarvestBridge: " + error);
        }
        idle();
    }

    @Override
    public void onScannedRobot(ScannedRobotEvent event) {
        scans.add(event);
    }

    private String report() {
        StringBuilder line = new StringBuilder(256);
        line.append("{\"round\":").append(getRoundNum()).append(",\"turn\":").append(getTime())
            .append(",\"x\":").append(getX()).append(",\"y\":").append(getY())
            .append(",\"heading\":").append(getHeadingRadians()).append(",\"energy\":").append(getEnergy())
            .append(",\"scans\":[");
        for (int i = 0; i < scans.size(); i++) {
            ScannedRobotEvent scan = scans.get(i);
            if (i > 0) line.append(',');
            line.append("{\"name\":\"").append(scan.getName())
                .append("\",\"bearing\":").append(scan.getBearingRadians())
                .append(",\"distance\":").append(scan.getDistance())
                .append(",\"energy\":").append(scan.getEnergy())
                .append(",\"heading\":").append(scan.getHeadingRadians())
                .append(",\"velocity\":").append(scan.getVelocity()).append('}');
        }
        scans.clear();
        return line.append("]}\n").toString();
    }

    private void apply(String action) {
        String[] values = action.trim().split("\\s+");
        if (values.length != 5) throw new IllegalArgumentException("HarvestBridge: expected 5 numbers, got " + action);
        double speed = Double.parseDouble(values[0]);
        setMaxVelocity(Math.abs(speed));
        setAhead(Math.signum(speed) * FAR);
        setTurnRight(Double.parseDouble(values[1]));
        setTurnGunRight(Double.parseDouble(values[2]));
        setTurnRadarRight(Double.parseDouble(values[3]));
        double power = Double.parseDouble(values[4]);
        if (power >= 0.1) setFire(power);
    }

    /** Stand still for the rest of the round. */
    private void idle() {
        setMaxVelocity(0);
        setAhead(0);
        setTurnRight(0);
        setTurnGunRight(0);
        setTurnRadarRight(0);
        while (true) execute();
    }
}
